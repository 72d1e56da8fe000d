//! `--user` / `--group`: drop privileges after the sockets are bound. Names are
//! looked up in /etc/passwd and /etc/group (no NSS: use numeric ids for users
//! from LDAP and the like).

use rustix::process::{Gid, Uid};

use crate::failure::{self, Failure, io_text};

fn lookup(file: &str, name: &str) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines()
        .map(|l| l.split(':').map(str::to_owned).collect::<Vec<_>>())
        .find(|fields| fields.first().map(String::as_str) == Some(name))
}

/// Switches to `user` and `group` (by name or number).
///
/// # Errors
///
/// An unknown name, or the switch is not permitted.
pub fn drop_to(user: Option<&str>, group: Option<&str>) -> Result<(), Failure> {
    let mut gid = None;
    let mut uid = None;
    if let Some(user) = user {
        let (u, primary) = match user.parse::<u32>() {
            Ok(n) => (n, None),
            Err(_) => {
                let fields = lookup("/etc/passwd", user).ok_or_else(|| {
                    failure::runtime(format!(
                        "--user {user}: no such user in /etc/passwd (use a numeric uid otherwise)"
                    ))
                })?;
                let id = |i: usize| fields.get(i).and_then(|f| f.parse::<u32>().ok());
                (
                    id(2).ok_or_else(|| {
                        failure::runtime(format!("--user {user}: bad entry in /etc/passwd"))
                    })?,
                    id(3),
                )
            }
        };
        uid = Some(u);
        gid = primary;
    }
    if let Some(group) = group {
        gid = Some(match group.parse::<u32>() {
            Ok(n) => n,
            Err(_) => lookup("/etc/group", group)
                .and_then(|f| f.get(2).and_then(|g| g.parse().ok()))
                .ok_or_else(|| {
                    failure::runtime(format!(
                        "--group {group}: no such group in /etc/group (use a numeric gid otherwise)"
                    ))
                })?,
        });
    }
    let denied = |flag: &str, value: &str, e: rustix::io::Errno| {
        failure::runtime(format!(
            "{flag} {value}: cannot switch: {} (only root can change user or group)",
            io_text(&e.into())
        ))
    };
    // The arbiter is single-threaded here, so the per-thread calls change the
    // whole process.
    if let Some(gid) = gid {
        let value = group.or(user).unwrap_or_default();
        let gid = Gid::from_raw(gid);
        rustix::thread::set_thread_groups(&[gid]).map_err(|e| denied("--group", value, e))?;
        rustix::thread::set_thread_res_gid(gid, gid, gid)
            .map_err(|e| denied("--group", value, e))?;
    }
    if let Some(uid) = uid {
        let uid = Uid::from_raw(uid);
        rustix::thread::set_thread_res_uid(uid, uid, uid)
            .map_err(|e| denied("--user", user.unwrap_or_default(), e))?;
    }
    Ok(())
}
