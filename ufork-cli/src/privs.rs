//! `--user` / `--group`: drop privileges after the sockets are bound.
//!
//! Names are looked up through NSS (`getpwnam_r`/`getgrnam_r` by way of
//! nix), so users from LDAP, SSSD or systemd's DynamicUser work like those in
//! /etc/passwd. The switch is process-wide: supplementary groups from
//! `initgroups` (the user's groups, not just one; for a uid with no passwd
//! entry, which needs `--group`, that group alone), then `setresgid` and
//! `setresuid`, which glibc applies to every thread of the process (the
//! per-thread system calls would leave other threads as root).
//!
//! Before the switch, [`helper`] forks ufork-daemon's privileged helper
//! ([`Privsep`]): it stays root and, once the arbiter is not, rotates and
//! reopens the log file, removes the pidfile, the control socket and the
//! `--bind unix:` sockets at the stop, in directories only root may write. [`ChildSide`] keeps every
//! worker off its channel.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Group, Uid, User};
use ufork_core::{ChildInfo, Layer};
use ufork_daemon::{Pidfile, Privsep, RotatingFile};

use crate::failure::{self, Failure, io_text};

/// Who the process becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user's name when it has one (for its supplementary groups).
    name: Option<String>,
    uid: Option<Uid>,
    gid: Option<Gid>,
}

/// Resolves `--user` and `--group` (names or numbers) to ids. The group
/// defaults to the user's primary group; a uid with no passwd entry has
/// none, and needs `--group`.
///
/// # Errors
///
/// An unknown name, or a lookup that failed (runtime errors); a uid with no
/// passwd entry and no `group` (a usage error).
pub fn resolve(user: Option<&str>, group: Option<&str>) -> Result<Credentials, Failure> {
    let mut creds = Credentials {
        name: None,
        uid: None,
        gid: None,
    };
    if let Some(user) = user {
        let entry = match user.parse::<u32>() {
            Ok(n) => User::from_uid(Uid::from_raw(n)),
            Err(_) => User::from_name(user),
        }
        .map_err(|e| failure::runtime(format!("--user {user}: cannot look it up: {e}")))?;
        match entry {
            Some(entry) => {
                creds.uid = Some(entry.uid);
                creds.gid = Some(entry.gid);
                creds.name = Some(entry.name);
            }
            // A uid no database knows still works, with the group given:
            // without one, the process would keep root's group (and, had
            // nothing reset them, root's supplementary groups).
            // Already this uid (an OpenShift-style uid with no passwd
            // entry, given its own uid): nothing to switch.
            None if group.is_none()
                && user.parse::<u32>().ok() == Some(rustix::process::geteuid().as_raw())
                && !rustix::process::geteuid().is_root() => {}
            None if user.parse::<u32>().is_ok() => {
                if group.is_none() {
                    return Err(failure::usage(format!(
                        "--user {user}: no user has this uid (looked up through NSS: /etc/passwd, LDAP, ...), so it has no group to switch to; give --group too"
                    )));
                }
                creds.uid = user.parse::<u32>().ok().map(Uid::from_raw);
            }
            None => {
                return Err(failure::runtime(format!(
                    "--user {user}: no such user (looked up through NSS: /etc/passwd, LDAP, ...)"
                )));
            }
        }
    }
    if let Some(group) = group {
        creds.gid = Some(match group.parse::<u32>() {
            Ok(n) => Gid::from_raw(n),
            Err(_) => Group::from_name(group)
                .map_err(|e| failure::runtime(format!("--group {group}: cannot look it up: {e}")))?
                .map(|g| g.gid)
                .ok_or_else(|| {
                    failure::runtime(format!(
                        "--group {group}: no such group (looked up through NSS: /etc/group, LDAP, ...)"
                    ))
                })?,
        });
    }
    Ok(creds)
}

impl Credentials {
    /// Switches the whole process: supplementary groups, then group, then user.
    /// The supplementary groups are always replaced: by the user's (its
    /// passwd entry's name) or by the one group alone, never kept.
    ///
    /// # Errors
    ///
    /// The switch is not permitted (only root may), or a name holds a NUL.
    pub fn apply(&self, user: Option<&str>, group: Option<&str>) -> Result<(), Failure> {
        if self.uid.is_some() && self.gid.is_none() {
            // `resolve` refuses this; never switch the user and keep root's
            // groups.
            return Err(failure::usage(format!(
                "--user {}: no group to switch to; give --group too",
                user.unwrap_or_default()
            )));
        }
        let denied = |flag: &str, value: &str, e: nix::Error| {
            failure::runtime(format!(
                "{flag} {value}: cannot switch: {} (only root can change user or group)",
                io_text(&std::io::Error::from(e))
            ))
        };
        if let Some(gid) = self.gid {
            let value = group.or(user).unwrap_or_default();
            match &self.name {
                Some(name) if group.is_none() || self.uid.is_some() => {
                    let name = CString::new(name.as_str()).map_err(|_| {
                        failure::runtime(format!("--user {name}: the name holds a NUL"))
                    })?;
                    nix::unistd::initgroups(&name, gid).map_err(|e| denied("--user", value, e))?;
                }
                _ => nix::unistd::setgroups(&[gid]).map_err(|e| denied("--group", value, e))?,
            }
            nix::unistd::setresgid(gid, gid, gid).map_err(|e| denied("--group", value, e))?;
        }
        if let Some(uid) = self.uid {
            nix::unistd::setresuid(uid, uid, uid)
                .map_err(|e| denied("--user", user.unwrap_or_default(), e))?;
        }
        Ok(())
    }
}

/// Gives the unix sockets this pool bound (`paths`) to the user and group
/// it switches to, as gunicorn does: a proxy in `--group` (nginx's
/// `www-data`) can connect through the 0660 mode, which a socket left to
/// root would refuse it. A symbolic link put at a path is not followed.
///
/// # Errors
///
/// An unknown name, or the change of owner failed (a message naming the
/// socket).
pub fn give_sockets(
    paths: &[PathBuf],
    user: Option<&str>,
    group: Option<&str>,
) -> Result<(), Failure> {
    if paths.is_empty() || (user.is_none() && group.is_none()) {
        return Ok(());
    }
    let creds = resolve(user, group)?;
    let owner = creds.uid.map(|u| rustix::fs::Uid::from_raw(u.as_raw()));
    let group = creds.gid.map(|g| rustix::fs::Gid::from_raw(g.as_raw()));
    for path in paths {
        rustix::fs::chownat(
            rustix::fs::CWD,
            path,
            owner,
            group,
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| {
            failure::runtime(format!(
                "--bind unix:{}: cannot give the socket to --user/--group: {}",
                path.display(),
                io_text(&e.into())
            ))
        })?;
    }
    Ok(())
}

/// Switches to `user` and `group` (by name or number), process-wide.
///
/// # Errors
///
/// An unknown name, or the switch is not permitted.
pub fn drop_to(user: Option<&str>, group: Option<&str>) -> Result<(), Failure> {
    resolve(user, group)?.apply(user, group)
}

/// `--check-config`'s check of `--user` and `--group`: they resolve, and
/// the switch the start makes is permitted. The only sure test of the
/// second is to make it (root may switch; so may a process with
/// `CAP_SETUID` and `CAP_SETGID`; a uid the user namespace does not map
/// fails even for root), so this process switches, and must do nothing
/// after it but exit: call it last. The error is the one the start would
/// stop with.
///
/// # Errors
///
/// An unknown name, or the switch is not permitted.
pub fn check(user: Option<&str>, group: Option<&str>) -> Result<(), Failure> {
    drop_to(user, group)
}

/// Forks the privileged helper for the files the arbiter must still touch
/// after `--user`/`--group` took effect: the log file (rotation, reopen on
/// SIGUSR1), the pidfile, the control socket and the unix sockets of
/// `--bind` (`sockets`, removed at the stop). Only
/// as root, where there is a privilege to keep, and only when there is a
/// file to serve. Call it while the process has one thread. The log it
/// reopens must be owned by root or by `user` (the `--user` value).
///
/// # Errors
///
/// `user` is unknown, or the helper cannot be started (a message naming
/// `--user`).
pub fn helper(
    log: Option<&RotatingFile>,
    pidfile: Option<&Pidfile>,
    control: Option<&Path>,
    sockets: &[PathBuf],
    user: Option<&str>,
    group: Option<&str>,
) -> Result<Option<Privsep>, Failure> {
    let nothing = log.is_none() && pidfile.is_none() && control.is_none() && sockets.is_empty();
    if !Uid::effective().is_root() || nothing {
        return Ok(None);
    }
    let mut builder = Privsep::builder();
    if let Some(uid) = resolve(user, group)?.uid {
        builder = builder.user(uid.as_raw());
    }
    if let Some(log) = log {
        builder = builder.log(log);
    }
    if let Some(pidfile) = pidfile {
        builder = builder.pidfile(pidfile);
    }
    if let Some(control) = control {
        builder = builder.remove_at_stop(control);
    }
    for socket in sockets {
        builder = builder.remove_at_stop(socket);
    }
    builder.start().map(Some).map_err(|e| {
        failure::runtime(format!(
            "--user: cannot start the privileged helper: {}",
            e.report()
        ))
    })
}

/// In every worker, right after the fork: the helper's channel is the
/// arbiter's alone (a worker could otherwise send it requests or take its
/// answers), so the worker's copy is pointed at /dev/null.
#[derive(Debug)]
pub struct ChildSide(pub Privsep);

impl Layer for ChildSide {
    fn in_child(&mut self, _child: &ChildInfo) -> std::io::Result<()> {
        self.0.close_in_child()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs in a re-executed copy of this test binary (`UFORK_PRIVS_CHILD`):
    /// with a second thread alive, switches to `nobody` and prints every
    /// thread's `Uid:` line.
    fn switch_with_a_second_thread() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let _ = rx.recv();
        });
        drop_to(Some("nobody"), None).unwrap();
        for task in std::fs::read_dir("/proc/self/task").unwrap() {
            let path = task.unwrap().path().join("status");
            let status = std::fs::read_to_string(path).unwrap();
            let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
            println!("thread {uid}");
        }
        drop(tx);
        thread.join().unwrap();
    }

    #[test]
    fn the_switch_covers_every_thread_of_the_process() {
        if std::env::var_os("UFORK_PRIVS_CHILD").is_some() {
            switch_with_a_second_thread();
            return;
        }
        if !Uid::effective().is_root() {
            println!("skipped: only root can switch users");
            return;
        }
        let Ok(Some(nobody)) = User::from_name("nobody") else {
            println!("skipped: no user nobody");
            return;
        };
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "privs::tests::the_switch_covers_every_thread_of_the_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("UFORK_PRIVS_CHILD", "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<&str> = stdout
            .lines()
            .filter(|l| l.starts_with("thread Uid:"))
            .collect();
        assert!(lines.len() >= 2, "{stdout}");
        for line in lines {
            let ids: Vec<&str> = line.split_whitespace().skip(2).collect();
            assert_eq!(ids, vec![nobody.uid.to_string(); 4], "{line}");
        }
    }

    #[test]
    fn names_and_numbers_resolve_through_nss() {
        let root = resolve(Some("root"), None).unwrap();
        assert_eq!(root.uid, Some(Uid::from_raw(0)));
        assert_eq!(root.gid, Some(Gid::from_raw(0)));
        assert_eq!(root.name.as_deref(), Some("root"));
        let numeric = resolve(Some("0"), Some("0")).unwrap();
        assert_eq!(
            (numeric.uid, numeric.gid),
            (Some(Uid::from_raw(0)), Some(Gid::from_raw(0)))
        );
        // A uid no database knows is still a uid, with the group given.
        let unknown = resolve(Some("4000000000"), Some("4000000000")).unwrap();
        assert_eq!(unknown.uid, Some(Uid::from_raw(4_000_000_000)));
        assert_eq!(unknown.gid, Some(Gid::from_raw(4_000_000_000)));
        assert_eq!(unknown.name, None);
        // Without one, it has no group: refused, never root's kept.
        let err = resolve(Some("4000000000"), None).unwrap_err();
        assert!(matches!(err, Failure::Usage(_)), "{err:?}");
        assert!(err.to_string().contains("give --group"), "{err}");
        let err = resolve(Some("no-such-user-ufork"), None).unwrap_err();
        assert!(err.to_string().contains("no such user"), "{err}");
        let err = resolve(None, Some("no-such-group-ufork")).unwrap_err();
        assert!(err.to_string().contains("no such group"), "{err}");
    }
}
