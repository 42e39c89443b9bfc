//! Accounts (`/client/v4/accounts`): the accounts an API token can act for
//! (with Warren's account-scoped tokens, exactly one). `warren login` reads
//! it to learn the account of a token.

use serde::{Deserialize, Serialize};

/// One account, as `GET /accounts` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountInfo {
    /// Account id (32 lowercase hex digits).
    pub id: String,
    /// Display name.
    pub name: String,
    /// RFC 3339 creation time.
    pub created_on: String,
}
