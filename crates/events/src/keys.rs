//! Idempotency keys of claims: a repeated request with the same
//! `Idempotency-Key` gets the first request's answer.
//!
//! A key's row is written before its claim is decided, and names the claim
//! id chosen for it. Its answer is stored once and is final: a grant's batch
//! stores it in the grant's own transaction (so a committed grant always has
//! its 201), a refusal before the batch stores it afterwards, and nothing
//! overwrites a stored answer. A key without an answer belongs to a request
//! in flight or one that died: a repeat looks for the key's claim — found, it
//! is the answer; not found, the repeat goes on with the same claim id, and
//! the grant's batch lets exactly one request of the key through. A request
//! that provably wrote nothing (the store refused, the batch rolled back)
//! releases its key at once.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rewards_kit::clock::to_micros;
use rewards_kit::problem::{PROBLEM_JSON, ProblemCode};
use rewards_kit::{Problem, with_pool};

use crate::AppState;
use crate::claims::{CLAIM_COLUMNS, ClaimRow, ClaimView};

/// How long an idempotency key's answer is kept.
pub const KEY_TTL: chrono::Duration = chrono::Duration::hours(24);

/// The answer of a claim attempt, as stored for its idempotency key.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub body: String,
}

impl Answer {
    pub fn of_problem(problem: &Problem) -> Self {
        Self { status: problem.status, body: problem.to_json() }
    }

    pub fn into_response(self) -> Response {
        let content_type = if self.status.is_success() { "application/json" } else { PROBLEM_JSON };
        let mut response = (self.status, [(axum::http::header::CONTENT_TYPE, content_type)], self.body).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(1));
        }
        response
    }
}

/// What a key says about a request.
pub enum Begun {
    /// Go on with this claim id.
    Fresh { claim_id: String },
    /// The key's final answer.
    Replay(Answer),
}

/// A key's row: request hash, answer (status, body), expiry, claim id.
type KeyRow = (String, Option<i64>, Option<String>, i64, Option<String>);

/// Takes the key for this request, or tells what became of it.
pub async fn begin(state: &AppState, user: &str, key: &str, hash: &str) -> Result<Begun, Problem> {
    let now = to_micros(state.clock.now());
    let expires = to_micros(state.clock.now() + KEY_TTL);
    let insert = "INSERT INTO idempotency_keys (user_id, key, request_hash, claim_id, created_at, expires_at) \
                  VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING";
    let select = "SELECT request_hash, response_status, response_body, expires_at, claim_id FROM idempotency_keys \
                  WHERE user_id = $1 AND key = $2";
    let expire = "DELETE FROM idempotency_keys WHERE user_id = $1 AND key = $2 AND expires_at < $3";
    // A key written before claim ids were kept with it.
    let adopt = "UPDATE idempotency_keys SET claim_id = $3 WHERE user_id = $1 AND key = $2 AND claim_id IS NULL";
    for _ in 0..3 {
        let claim_id = crate::new_id();
        let inserted = with_pool!(state.store(), |pool| {
            sqlx::query(insert)
                .bind(user)
                .bind(key)
                .bind(hash)
                .bind(&claim_id)
                .bind(now)
                .bind(expires)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })?;
        if inserted == 1 {
            return Ok(Begun::Fresh { claim_id });
        }
        let row: Option<KeyRow> = with_pool!(state.store(), |pool| {
            sqlx::query_as(select).bind(user).bind(key).fetch_optional(pool).await
        })?;
        let Some((stored_hash, status, body, expires_at, stored_claim)) = row else { continue };
        if expires_at < now {
            with_pool!(state.store(), |pool| {
                sqlx::query(expire).bind(user).bind(key).bind(now).execute(pool).await.map(drop)
            })?;
            continue;
        }
        if stored_hash != hash {
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ProblemCode::IdempotencyKeyReused,
                "this Idempotency-Key was used with a different request",
            ));
        }
        if let (Some(status), Some(body)) = (status, body) {
            return Ok(Begun::Replay(stored_answer(status, body)));
        }
        let Some(claim_id) = stored_claim else {
            with_pool!(state.store(), |pool| {
                sqlx::query(adopt).bind(user).bind(key).bind(&claim_id).execute(pool).await.map(drop)
            })?;
            continue;
        };
        // In flight, or left by a request that died: its claim says which.
        return Ok(match committed_claim(state, &claim_id).await? {
            Some(row) => {
                let body = serde_json::to_string(&ClaimView::from_row(&row)).unwrap_or_default();
                Begun::Replay(finish(state, user, key, &claim_id, Answer { status: StatusCode::CREATED, body }).await?)
            }
            None => Begun::Fresh { claim_id },
        });
    }
    Err(Problem::unavailable("the idempotency key is changing hands; try again", 1))
}

async fn committed_claim(state: &AppState, claim_id: &str) -> Result<Option<ClaimRow>, Problem> {
    let sql = format!("SELECT {CLAIM_COLUMNS} FROM reward_claims WHERE id = $1");
    Ok(with_pool!(state.store(), |pool| sqlx::query_as(&sql).bind(claim_id).fetch_optional(pool).await)?)
}

fn stored_answer(status: i64, body: String) -> Answer {
    Answer { status: StatusCode::from_u16(status as u16).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), body }
}

/// Stores `answer` as the key's final answer unless one is stored already;
/// returns the final answer.
pub async fn finish(
    state: &AppState,
    user: &str,
    key: &str,
    claim_id: &str,
    answer: Answer,
) -> Result<Answer, Problem> {
    let sql = "UPDATE idempotency_keys SET response_status = $1, response_body = $2 \
               WHERE user_id = $3 AND key = $4 AND claim_id = $5 AND response_status IS NULL";
    let stored = with_pool!(state.store(), |pool| {
        sqlx::query(sql)
            .bind(i64::from(answer.status.as_u16()))
            .bind(&answer.body)
            .bind(user)
            .bind(key)
            .bind(claim_id)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
    })?;
    if stored == 1 {
        return Ok(answer);
    }
    Ok(stored_answer_of(state, user, key).await?.unwrap_or(answer))
}

/// The key's stored answer, if it has one.
pub async fn stored_answer_of(state: &AppState, user: &str, key: &str) -> Result<Option<Answer>, Problem> {
    let sql = "SELECT response_status, response_body FROM idempotency_keys WHERE user_id = $1 AND key = $2";
    let row: Option<(Option<i64>, Option<String>)> =
        with_pool!(state.store(), |pool| sqlx::query_as(sql).bind(user).bind(key).fetch_optional(pool).await)?;
    Ok(match row {
        Some((Some(status), Some(body))) => Some(stored_answer(status, body)),
        _ => None,
    })
}

/// Forgets a key whose request provably wrote nothing, so the client's
/// retry is not held up.
pub async fn release(state: &AppState, user: &str, key: &str, claim_id: &str) {
    let sql =
        "DELETE FROM idempotency_keys WHERE user_id = $1 AND key = $2 AND claim_id = $3 AND response_status IS NULL";
    let released = with_pool!(state.store(), |pool| {
        sqlx::query(sql).bind(user).bind(key).bind(claim_id).execute(pool).await.map(drop)
    });
    if let Err(err) = released {
        tracing::warn!(error = %err, "could not release an idempotency key; a retry resumes it");
    }
}
