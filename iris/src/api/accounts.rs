//! `/client/v4/accounts`: the account of the caller's token (Cloudflare's
//! "List Accounts"; a Warren token belongs to one account).

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::get;
use warren_api::accounts::AccountInfo;
use warren_api::server::{ApiError, ApiResult, account_of};

use super::ApiState;

pub(super) fn routes() -> Router<ApiState> {
    Router::new().route("/client/v4/accounts", get(list))
}

async fn list(State(state): State<ApiState>, headers: HeaderMap) -> ApiResult<Vec<AccountInfo>> {
    let id = account_of(state.store.as_ref(), &headers).await?;
    let account = state
        .store
        .list_accounts()
        .await?
        .into_iter()
        .find(|a| a.id == id)
        .ok_or_else(ApiError::unauthorized)?;
    let items = vec![AccountInfo {
        id: account.id,
        name: account.name,
        created_on: account.created_at,
    }];
    warren_api::server::page(items, &Default::default())
}
