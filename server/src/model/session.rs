use serde::{Deserialize, Serialize};

use super::{Id, Timestamp};

/// A live connection as listed by `GET /api/sessions`, and as pods tell each
/// other of theirs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub connection_id: String,
    pub user_id: Id,
    pub pod: String,
    #[serde(with = "time::serde::rfc3339")]
    pub connected_at: Timestamp,
    pub rooms: Vec<Id>,
}
