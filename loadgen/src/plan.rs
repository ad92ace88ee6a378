//! Who connects, which conversation each connection belongs to, and who sends.
//!
//! A plan is built the same way in every process of a run (from the users
//! file, or from the scenario for synthetic users), so connection `i`, its
//! conversation and its sending role agree everywhere; process `k` of `n`
//! takes the connections with `i % n == k`.
//!
//! # Users file (`gochat seed --out`, and the parent's hand-off to children)
//! ```json
//! {"version": 1, "password": "…",
//!  "users": [{"id": "123", "username": "lg_ab12_0", "guest": false, "token": "optional"}],
//!  "chat":  [{"id": "s_…", "members": [0, 1]}],
//!  "group": [{"id": "g_…", "members": [2, 3, 4]}],
//!  "room":  {"id": "world", "members": [0, 1, 2]}}
//! ```
//! `members` are indices into `users`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::cli::Scenario;

/// Per-connection send rate the server allows by default (`ws.rate_per_sec`).
pub const SERVER_RATE_LIMIT: f64 = 20.0;

/// One user as the file lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileUser {
    pub id: String,
    pub username: String,
    #[serde(default)]
    pub guest: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// A conversation as the file lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileConv {
    pub id: String,
    pub members: Vec<usize>,
}

/// The users file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsersFile {
    #[serde(default)]
    pub version: u32,
    /// Password of every registered seeded user (for `--auth http` logins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    pub users: Vec<FileUser>,
    #[serde(default)]
    pub chat: Vec<FileConv>,
    #[serde(default)]
    pub group: Vec<FileConv>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<FileConv>,
}

impl UsersFile {
    pub fn read(path: &Path) -> Result<UsersFile, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Setup(format!("cannot read {}: {e}", path.display())))?;
        let f: UsersFile = serde_json::from_str(&text).map_err(|e| Error::Setup(format!("{} is not a users file: {e}", path.display())))?;
        let n = f.users.len();
        let convs = f.chat.iter().chain(&f.group).chain(f.room.iter());
        if let Some(bad) = convs.flat_map(|c| c.members.iter()).find(|m| **m >= n) {
            return Err(Error::Setup(format!("{}: member index {bad} but only {n} users", path.display())));
        }
        Ok(f)
    }

    pub fn write(&self, path: &Path) -> Result<(), Error> {
        let text = serde_json::to_string(self).map_err(|e| Error::Setup(e.to_string()))?;
        std::fs::write(path, text).map_err(|e| Error::Setup(format!("cannot write {}: {e}", path.display())))
    }
}

/// A connection's user.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub id: String,
    pub name: String,
    pub guest: bool,
    pub token: Option<String>,
}

/// A conversation of the plan: member connections and which of them send.
#[derive(Debug, Clone, PartialEq)]
pub struct Conv {
    pub id: String,
    pub members: Vec<usize>,
    pub senders: Vec<usize>,
}

/// The whole run.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// One connection per user, in this order.
    pub users: Vec<User>,
    pub convs: Vec<Conv>,
    /// Conversation of each connection (`None` in `connect`).
    pub conv_of: Vec<Option<usize>>,
    /// Whether each connection sends.
    pub sends: Vec<bool>,
    /// Messages per second of each sender.
    pub rate_per_sender: f64,
    /// The users file password, for HTTP logins of seeded users.
    pub password: Option<String>,
}

/// Sizes of a scenario: users, conversations of `members` each, senders each, total rate.
fn shape(s: &Scenario) -> (usize, usize, usize, f64) {
    match s {
        Scenario::Connect { connections, .. } => (*connections, 0, 0, 0.0),
        Scenario::Chat { pairs, rate } => (*pairs, 2, 2, *rate),
        Scenario::Group { groups, size, senders, rate } => (*groups, *size, (*senders).min(*size), *rate),
        Scenario::Room { members, rate, senders, .. } => {
            let s = senders.unwrap_or_else(|| (rate / 10.0).ceil().max(1.0) as usize).clamp(1, (*members).max(1));
            (1, *members, s, *rate)
        }
    }
}

/// Evenly spread `s` of `n` positions (0, n/s, 2n/s, …).
fn spread(n: usize, s: usize) -> Vec<usize> {
    (0..s).map(|j| j * n / s).collect()
}

impl Plan {
    /// Assembles a plan from users and conversations given as lists of user indices.
    fn assemble(s: &Scenario, users: Vec<User>, convs: Vec<(String, Vec<usize>)>) -> Plan {
        let (_, _, senders, rate) = shape(s);
        let mut conv_of = vec![None; users.len()];
        let mut sends = vec![false; users.len()];
        let mut out = Vec::new();
        for (ci, (id, members)) in convs.into_iter().enumerate() {
            let picked: Vec<usize> = spread(members.len(), senders.min(members.len())).into_iter().map(|j| members[j]).collect();
            for m in &members {
                conv_of[*m] = Some(ci);
            }
            for m in &picked {
                sends[*m] = true;
            }
            out.push(Conv { id, members, senders: picked });
        }
        let total_senders = sends.iter().filter(|s| **s).count();
        let rate_per_sender = if total_senders == 0 { 0.0 } else { rate / total_senders as f64 };
        Plan { users, convs: out, conv_of, sends, rate_per_sender, password: None }
    }

    /// Synthetic users `1..=N` in one room (for `--auth secret` without a users file).
    pub fn synthetic(s: &Scenario) -> Result<Plan, Error> {
        let users_of = |n: usize| -> Vec<User> {
            (1..=n).map(|i| User { id: i.to_string(), name: format!("lg_{i}"), guest: true, token: None }).collect()
        };
        match s {
            Scenario::Connect { connections, .. } => Ok(Plan::assemble(s, users_of(*connections), vec![])),
            Scenario::Room { members, room, .. } => {
                Ok(Plan::assemble(s, users_of(*members), vec![(room.clone(), (0..*members).collect())]))
            }
            _ => Err(Error::Usage(format!(
                "{} with --auth secret needs --users-file (from `gochat seed`): synthetic users have no conversations",
                s.name()
            ))),
        }
    }

    /// The plan for scenario `s` from a users file: the first conversations
    /// and members of the right kind.
    pub fn from_file(s: &Scenario, f: &UsersFile) -> Result<Plan, Error> {
        let (count, size, _, _) = shape(s);
        let too_few = |what: &str, have: usize| Error::Setup(format!("the users file has {have} {what}; the scenario needs {count}"));
        // Connection order: the file's users in the order the conversations name them.
        let mut users = Vec::new();
        let mut take = |idx: usize| {
            let u = &f.users[idx];
            users.push(User { id: u.id.clone(), name: u.username.clone(), guest: u.guest, token: u.token.clone() });
            users.len() - 1
        };
        let convs: Vec<(String, Vec<usize>)> = match s {
            Scenario::Connect { .. } => {
                if f.users.len() < count {
                    return Err(too_few("users", f.users.len()));
                }
                (0..count).for_each(|i| {
                    take(i);
                });
                vec![]
            }
            Scenario::Chat { .. } | Scenario::Group { .. } => {
                let list = if matches!(s, Scenario::Chat { .. }) { &f.chat } else { &f.group };
                if list.len() < count {
                    return Err(too_few(if matches!(s, Scenario::Chat { .. }) { "pairs" } else { "groups" }, list.len()));
                }
                let mut convs = Vec::new();
                for c in &list[..count] {
                    if c.members.len() < size {
                        return Err(Error::Setup(format!(
                            "conversation {} has {} members; the scenario needs {size}",
                            c.id,
                            c.members.len()
                        )));
                    }
                    convs.push((c.id.clone(), c.members[..size].iter().map(|m| take(*m)).collect()));
                }
                convs
            }
            Scenario::Room { .. } => {
                let room = f.room.as_ref().ok_or_else(|| Error::Setup("the users file has no room (seed with --room-members)".into()))?;
                if room.members.len() < size {
                    return Err(Error::Setup(format!(
                        "the room has {} members in the users file; the scenario needs {size}",
                        room.members.len()
                    )));
                }
                vec![(room.id.clone(), room.members[..size].iter().map(|m| take(*m)).collect())]
            }
        };
        let mut plan = Plan::assemble(s, users, convs);
        plan.password = f.password.clone();
        Ok(plan)
    }

    /// The plan as a users file (parent → children), tokens included.
    pub fn to_file(&self, s: &Scenario) -> UsersFile {
        let users = self
            .users
            .iter()
            .map(|u| FileUser { id: u.id.clone(), username: u.name.clone(), guest: u.guest, token: u.token.clone() })
            .collect();
        let convs: Vec<FileConv> = self.convs.iter().map(|c| FileConv { id: c.id.clone(), members: c.members.clone() }).collect();
        let mut f = UsersFile { version: 1, password: self.password.clone(), users, ..UsersFile::default() };
        match s {
            Scenario::Chat { .. } => f.chat = convs,
            Scenario::Group { .. } => f.group = convs,
            Scenario::Room { .. } => f.room = convs.into_iter().next(),
            Scenario::Connect { .. } => {}
        }
        f
    }

    /// A warning when senders would exceed the server's default rate limit.
    pub fn rate_warning(&self) -> Option<String> {
        (self.rate_per_sender > SERVER_RATE_LIMIT * 0.9).then(|| {
            format!(
                "warning: each sender would send {:.1} msg/s; the server's default per-connection limit is {SERVER_RATE_LIMIT} msg/s \
                 (burst 40): add pairs/groups/--senders or expect RATE_LIMITED errors",
                self.rate_per_sender
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(members: usize, rate: f64, senders: Option<usize>) -> Scenario {
        Scenario::Room { members, rate, room: "world".into(), senders }
    }

    #[test]
    fn synthetic_room_spreads_senders() {
        let p = Plan::synthetic(&room(100, 40.0, None)).expect("plan");
        assert_eq!(p.users.len(), 100);
        assert_eq!(p.users[0].id, "1");
        assert_eq!(p.convs[0].senders, vec![0, 25, 50, 75]);
        assert_eq!(p.rate_per_sender, 10.0);
        assert!(p.conv_of.iter().all(|c| *c == Some(0)));
        assert!(p.rate_warning().is_none());
        let p = Plan::synthetic(&room(10, 100.0, Some(2))).expect("plan");
        assert!(p.rate_warning().is_some());
        assert!(Plan::synthetic(&Scenario::Chat { pairs: 1, rate: 1.0 }).is_err());
    }

    #[test]
    fn file_plans_round_trip() {
        let users: Vec<FileUser> =
            (0..8).map(|i| FileUser { id: format!("{}", 100 + i), username: format!("u{i}"), guest: false, token: None }).collect();
        let f = UsersFile {
            version: 1,
            password: Some("pw".into()),
            users,
            chat: vec![FileConv { id: "s_1".into(), members: vec![0, 1] }, FileConv { id: "s_2".into(), members: vec![2, 3] }],
            group: vec![FileConv { id: "g_1".into(), members: vec![4, 5, 6, 7] }],
            room: Some(FileConv { id: "world".into(), members: (0..8).collect() }),
        };
        let chat = Scenario::Chat { pairs: 2, rate: 8.0 };
        let p = Plan::from_file(&chat, &f).expect("chat");
        assert_eq!(p.users.len(), 4);
        assert_eq!(p.convs[1].members, vec![2, 3]);
        assert_eq!(p.users[2].id, "102");
        assert_eq!(p.rate_per_sender, 2.0);
        assert_eq!(p.password.as_deref(), Some("pw"));
        // The hand-off file gives the same plan back.
        assert_eq!(Plan::from_file(&chat, &p.to_file(&chat)).expect("again"), p);

        let g = Scenario::Group { groups: 1, size: 3, senders: 1, rate: 1.0 };
        let p = Plan::from_file(&g, &f).expect("group");
        assert_eq!(p.users.iter().map(|u| u.id.as_str()).collect::<Vec<_>>(), ["104", "105", "106"]);
        assert_eq!(p.convs[0].senders, vec![0]);
        assert!(Plan::from_file(&Scenario::Group { groups: 2, size: 3, senders: 1, rate: 1.0 }, &f).is_err());
        assert!(Plan::from_file(&room(9, 1.0, None), &f).is_err());
        assert_eq!(Plan::from_file(&room(8, 1.0, None), &f).expect("room").convs[0].id, "world");
    }
}
