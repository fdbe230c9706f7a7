//! Peer tickets: a worker hands a result to a peer only for the ticket the
//! scheduler issued with the assignment (or copy) that needs it. A ticket
//! is an HMAC-SHA256, keyed with the cluster secret, of the task's id: the
//! scheduler and every worker can make and check one; a tenant, or anyone
//! else who reaches a worker's peer port, cannot, so result ids are no use
//! to them.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::TaskId;

/// The ticket for fetching `task`'s result from a peer.
pub fn ticket(secret: &str, task: TaskId) -> [u8; 32] {
    mac(secret, task).finalize().into_bytes().into()
}

/// Whether `presented` is the ticket for `task`.
pub fn check(secret: &str, task: TaskId, presented: &[u8]) -> bool {
    mac(secret, task).verify_slice(presented).is_ok()
}

fn mac(secret: &str, task: TaskId) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(b"wrun peer fetch\0");
    mac.update(&task.0.to_le_bytes());
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_opens_its_task_only_and_only_with_the_secret() {
        let t = ticket("secret", TaskId(7));
        assert!(check("secret", TaskId(7), &t));
        assert!(!check("secret", TaskId(8), &t));
        assert!(!check("other", TaskId(7), &t));
        assert!(!check("secret", TaskId(7), &t[..31]));
        assert!(!check("secret", TaskId(7), b""));
    }
}
