//! Who may use the control socket: root, the daemon's own user, and members of the configured
//! group (`[control] group`, default `lancache`). The kernel vouches for the peer's uid, gid and
//! pid (`SO_PEERCRED`), so nothing the client says about itself matters.

use anyhow::{Context, Result};
use nix::unistd::{Gid, Group, Uid, User};
use tokio::net::UnixStream;

#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

impl Caller {
    pub fn of(stream: &UnixStream) -> Result<Caller> {
        let cred = stream
            .peer_cred()
            .context("reading the control peer's credentials")?;
        Ok(Caller {
            uid: cred.uid(),
            gid: cred.gid(),
            pid: cred.pid(),
        })
    }
}

/// `Ok` when the caller may control the daemon; otherwise the reason, worded for the caller.
pub fn authorise(caller: &Caller, group: &str) -> Result<(), String> {
    if caller.uid == 0 || caller.uid == Uid::effective().as_raw() {
        return Ok(());
    }
    if !group.is_empty() {
        if let Ok(Some(g)) = Group::from_name(group) {
            if g.gid == Gid::from_raw(caller.gid) {
                return Ok(());
            }
            // Supplementary membership: the group's member list names users, not uids.
            if let Ok(Some(user)) = User::from_uid(Uid::from_raw(caller.uid)) {
                if g.mem.contains(&user.name) {
                    return Ok(());
                }
            }
        }
    }
    Err(format!(
        "uid {} may not control lancached: only root, the daemon's user and members of group {group:?} may",
        caller.uid
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_self_allowed_others_refused() {
        assert!(authorise(
            &Caller {
                uid: 0,
                gid: 0,
                pid: None
            },
            ""
        )
        .is_ok());
        let me = Uid::effective().as_raw();
        assert!(authorise(
            &Caller {
                uid: me,
                gid: 12345,
                pid: None
            },
            ""
        )
        .is_ok());
        let stranger = Caller {
            uid: 54321,
            gid: 54321,
            pid: None,
        };
        let err = authorise(&stranger, "no-such-group-here").unwrap_err();
        assert!(err.contains("uid 54321"), "{err}");
    }
}
