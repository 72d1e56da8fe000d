//! One module per subcommand, as cargo keeps them: each file holds the
//! subcommand's flags and what it does, so a command reads on one screen.
//! Flags shared by several subcommands live in `cli.rs` (`PoolArgs`) and in
//! `target.rs` (how to find a running pool).

pub mod ctl;
pub mod reload;
pub mod run;
pub mod serve;
pub mod status;
pub mod stop;
pub mod target;
pub mod upgrade;

use crate::cli::{Cli, Command};
use crate::failure::Result;

/// Runs the subcommand the command line names.
pub fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(args) => serve::exec(args),
        Command::Run(args) => run::exec(args),
        Command::Status(args) => status::exec(&args),
        Command::Stop(args) => stop::exec(&args),
        Command::Reload(args) => reload::exec(&args),
        Command::Ctl(args) => ctl::exec(&args),
        Command::Upgrade(args) => upgrade::exec(&args),
    }
}
