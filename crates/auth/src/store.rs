//! Everything the auth service keeps, on SQLite or PostgreSQL.
//!
//! Queries are written once (`$n` placeholders work on both engines) and run
//! against whichever pool the store holds. Invariants are the database's:
//! usernames are unique by a unique index on the lower-cased name, a refresh
//! token is spent by a guarded update that only one caller can win, and role
//! changes that would leave no ADMIN are refused inside the transaction that
//! makes them.

use chrono::{DateTime, Utc};
use rewards_kit::clock::{from_micros, to_micros};
use rewards_kit::identity::Role;
use rewards_kit::page::{PageRequest, keyset_condition};
use rewards_kit::store::{Store, is_unique_violation};
use rewards_kit::{with_pool, with_write_tx};

/// The key a username is found by: ASCII letters folded, nothing else.
/// Usernames are ASCII (see `users::check_username`); Unicode folding would
/// let another spelling (`Kevin` with U+212A KELVIN SIGN) find `kevin`.
pub fn username_key(username: &str) -> String {
    username.to_ascii_lowercase()
}

/// How many active ADMINs there are (inside a role or status change).
const ACTIVE_ADMINS: &str =
    "SELECT COUNT(*) FROM users WHERE (',' || roles || ',') LIKE '%,ADMIN,%' AND status = 'ACTIVE'";
/// The acting account's roles, if it is active.
const ACTING_ADMIN_ROLES: &str = "SELECT roles FROM users WHERE id = $1 AND status = 'ACTIVE'";

/// A user as stored (with the password hash, which never leaves the service).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserRecord {
    pub id: String,
    pub username: String,
    pub password_hash: String,
    pub roles: String,
    pub referrer_id: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// Bumped by every change that revokes the user's tokens; carried by
    /// each access token as `tv`.
    pub token_version: i64,
    /// `ACTIVE` or `DISABLED`.
    pub status: String,
}

impl UserRecord {
    pub fn is_active(&self) -> bool {
        self.status == "ACTIVE"
    }

    pub fn roles(&self) -> Vec<Role> {
        parse_roles(&self.roles)
    }

    pub fn created_at(&self) -> DateTime<Utc> {
        from_micros(self.created_at)
    }
}

/// Roles as stored: sorted, de-duplicated, comma-separated.
pub fn format_roles(roles: &[Role]) -> String {
    let mut roles = roles.to_vec();
    roles.sort();
    roles.dedup();
    roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(",")
}

pub fn parse_roles(text: &str) -> Vec<Role> {
    text.split(',').filter_map(|r| r.parse().ok()).collect()
}

/// A user to create.
pub struct NewUser<'a> {
    pub id: &'a str,
    pub username: &'a str,
    pub password_hash: &'a str,
    pub roles: &'a [Role],
    pub referrer_id: Option<&'a str>,
    pub now: DateTime<Utc>,
    /// Report a `SIGNUP` activity (public signups do; accounts made by an
    /// ADMIN or the bootstrap do not).
    pub announce: bool,
    /// The ADMIN who registered it (id, username): the registration goes
    /// into the audit trail with the account.
    pub registered_by: Option<(&'a str, &'a str)>,
}

/// An activity waiting in the outbox.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxRow {
    pub id: String,
    pub user_id: String,
    #[sqlx(rename = "type")]
    pub kind: String,
    pub occurred_at: i64,
    pub attributes: String,
    pub attempts: i64,
}

const INSERT_OUTBOX: &str = "INSERT INTO outbox (id, user_id, type, occurred_at, attributes, created_at, next_attempt_at) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7)";

/// Queues an activity inside the transaction `$tx`: it commits, or is lost,
/// together with what it reports.
macro_rules! enqueue {
    ($tx:ident, $user:expr, $kind:expr, $occurred:expr, $attributes:expr) => {
        sqlx::query(INSERT_OUTBOX)
            .bind(uuid::Uuid::now_v7().to_string())
            .bind($user)
            .bind($kind)
            .bind($occurred)
            .bind($attributes)
            .bind(Utc::now().timestamp_micros())
            .bind(Utc::now().timestamp_micros())
            .execute(&mut *$tx)
            .await?
    };
}

const INSERT_AUDIT: &str = "INSERT INTO audit_log \
    (id, created_at, actor_id, actor_name, entity, entity_id, action, before, after) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

/// Records an account change in the audit trail, inside the transaction
/// `$tx` that makes it: `$actor` is (id, username); `$before` and `$after`
/// are optional JSON values.
macro_rules! audit {
    ($tx:ident, $at:expr, $actor:expr, $entity:expr, $entity_id:expr, $action:expr, $before:expr, $after:expr) => {{
        let (actor_id, actor_name): (&str, &str) = $actor;
        let before: Option<serde_json::Value> = $before;
        let after: Option<serde_json::Value> = $after;
        sqlx::query(INSERT_AUDIT)
            .bind(uuid::Uuid::now_v7().to_string())
            .bind($at)
            .bind(actor_id)
            .bind(actor_name)
            .bind($entity)
            .bind($entity_id)
            .bind($action)
            .bind(before.map(|v| v.to_string()))
            .bind(after.map(|v| v.to_string()))
            .execute(&mut *$tx)
            .await?
    }};
}

/// Refuses the change (`StoreError::ActorNotAdmin`) unless the actor is an
/// active ADMIN in the store, read inside the transaction `$tx`.
macro_rules! require_acting_admin {
    ($tx:ident, $actor_id:expr) => {{
        let acting: Option<String> =
            sqlx::query_scalar(ACTING_ADMIN_ROLES).bind($actor_id).fetch_optional(&mut *$tx).await?;
        if !acting.is_some_and(|roles| parse_roles(&roles).contains(&Role::Admin)) {
            return Err(StoreError::ActorNotAdmin);
        }
    }};
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("username taken")]
    UsernameTaken,
    #[error("not found")]
    NotFound,
    #[error("the last ADMIN cannot lose the role")]
    LastAdmin,
    /// The acting account no longer holds the role its token names.
    #[error("the actor is no longer an ADMIN")]
    ActorNotAdmin,
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
}

/// What presenting a refresh token did.
#[derive(Debug)]
pub enum Rotation {
    /// The token was live and is now spent; the new one is stored.
    Rotated { user: Box<UserRecord>, family_id: String },
    /// The token had been spent before: its family is now revoked.
    Replayed { family_id: String },
    /// Unknown, expired, or of a revoked family.
    Refused,
}

/// A signing key as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeyRecord {
    pub kid: String,
    pub secret_key: Vec<u8>,
    pub public_key: Vec<u8>,
    pub created_at: i64,
    pub active_from: i64,
}

/// The auth service's store.
#[derive(Debug, Clone)]
pub struct AuthStore {
    store: Store,
}

const USER_COLUMNS: &str =
    "id, username, password_hash, roles, referrer_id, created_at, updated_at, token_version, status";

impl AuthStore {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    pub fn inner(&self) -> &Store {
        &self.store
    }

    /// Creates a user; a username taken in any letter case is refused by the
    /// unique index, whoever races for it.
    pub async fn insert_user(&self, user: NewUser<'_>) -> Result<UserRecord, StoreError> {
        let sql = format!(
            "INSERT INTO users (id, username, username_key, password_hash, roles, referrer_id, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7) RETURNING {USER_COLUMNS}"
        );
        let at = to_micros(user.now);
        let roles = format_roles(user.roles);
        let key = username_key(user.username);
        let attributes = match user.referrer_id {
            Some(referrer) => serde_json::json!({ "referrerId": referrer }).to_string(),
            None => "{}".to_owned(),
        };
        let result: Result<UserRecord, sqlx::Error> = async {
            Ok(with_write_tx!(&self.store, |tx| {
                let record = sqlx::query_as::<_, UserRecord>(&sql)
                    .bind(user.id)
                    .bind(user.username)
                    .bind(&key)
                    .bind(user.password_hash)
                    .bind(&roles)
                    .bind(user.referrer_id)
                    .bind(at)
                    .fetch_one(&mut *tx)
                    .await?;
                if user.announce {
                    enqueue!(tx, user.id, "SIGNUP", at, &attributes);
                }
                if let Some(actor) = user.registered_by {
                    let registered = serde_json::json!({ "username": user.username, "roles": user.roles });
                    audit!(tx, at, actor, "user", user.id, "user.register", None, Some(registered));
                }
                record
            }))
        }
        .await;
        result.map_err(|err| if is_unique_violation(&err) { StoreError::UsernameTaken } else { err.into() })
    }

    pub async fn user_by_username(&self, username: &str) -> Result<Option<UserRecord>, sqlx::Error> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE username_key = $1");
        let key = username_key(username);
        with_pool!(&self.store, |pool| sqlx::query_as::<_, UserRecord>(&sql).bind(&key).fetch_optional(pool).await)
    }

    pub async fn user_by_id(&self, id: &str) -> Result<Option<UserRecord>, sqlx::Error> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
        with_pool!(&self.store, |pool| sqlx::query_as::<_, UserRecord>(&sql).bind(id).fetch_optional(pool).await)
    }

    /// Newest first; `role` keeps holders of that role, `q` usernames
    /// containing it (any case).
    pub async fn list_users(
        &self,
        role: Option<Role>,
        q: Option<&str>,
        page: &PageRequest,
    ) -> Result<Vec<UserRecord>, sqlx::Error> {
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM users WHERE {keyset} \
             AND ($3 IS NULL OR (',' || roles || ',') LIKE $3) \
             AND ($4 IS NULL OR username_key LIKE $4 ESCAPE '\\') \
             ORDER BY created_at DESC, id DESC LIMIT $5",
            keyset = keyset_condition(1, 2)
        );
        let (at, id) = page.bounds();
        let role = role.map(|r| format!("%,{},%", r.as_str()));
        let q = q.map(|q| format!("%{}%", escape_like(&username_key(q))));
        with_pool!(&self.store, |pool| {
            sqlx::query_as::<_, UserRecord>(&sql)
                .bind(at)
                .bind(&id)
                .bind(&role)
                .bind(&q)
                .bind(page.fetch())
                .fetch_all(pool)
                .await
        })
    }

    /// The users whose tokens were revoked at or after `since` (micros):
    /// (user id, the token version now required, when), oldest first, at
    /// most `limit`.
    pub async fn revocations(&self, since: i64, limit: i64) -> Result<Vec<(String, i64, i64)>, sqlx::Error> {
        let sql = "SELECT id, token_version, tokens_revoked_at FROM users WHERE tokens_revoked_at >= $1 \
                   ORDER BY tokens_revoked_at, id LIMIT $2";
        with_pool!(&self.store, |pool| sqlx::query_as(sql).bind(since).bind(limit).fetch_all(pool).await)
    }

    pub async fn any_admin(&self) -> Result<bool, sqlx::Error> {
        let sql = "SELECT COUNT(*) FROM users WHERE (',' || roles || ',') LIKE '%,ADMIN,%'";
        let count: i64 = with_pool!(&self.store, |pool| sqlx::query_scalar(sql).fetch_one(pool).await)?;
        Ok(count > 0)
    }

    /// Replaces a user's roles and records the change, in one transaction. A
    /// change that would leave no ADMIN is refused: the count is taken inside
    /// the transaction, after the write, where concurrent demotions serialise
    /// (SQLite's write lock; a PostgreSQL advisory lock for role changes).
    /// The actor must still be an ADMIN as the store has it (not only as its
    /// token says: a demoted ADMIN's token lives on until it expires), and the
    /// user's refresh-token families are revoked with the change, so no
    /// session of theirs goes on with the old roles.
    pub async fn set_roles(
        &self,
        username: &str,
        roles: &[Role],
        actor: (&str, &str),
        now: DateTime<Utc>,
    ) -> Result<(UserRecord, UserRecord), StoreError> {
        let key = username_key(username);
        let new_roles = format_roles(roles);
        let at = to_micros(now);
        let select = format!("SELECT {USER_COLUMNS} FROM users WHERE username_key = $1");
        let update = format!(
            "UPDATE users SET roles = $1, updated_at = $2, token_version = token_version + 1, tokens_revoked_at = $2 \
                     WHERE username_key = $3 RETURNING {USER_COLUMNS}"
        );
        let revoke = "UPDATE token_families SET revoked_at = $1, revoked_reason = 'roles changed' \
                      WHERE user_id = $2 AND revoked_at IS NULL";
        let is_pg = matches!(self.store, Store::Postgres(_));
        let pair = with_write_tx!(&self.store, |tx| {
            if is_pg {
                sqlx::query("SELECT pg_advisory_xact_lock(7431001)").execute(&mut *tx).await?;
            }
            require_acting_admin!(tx, actor.0);
            let before = sqlx::query_as::<_, UserRecord>(&select)
                .bind(&key)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::NotFound)?;
            let after = sqlx::query_as::<_, UserRecord>(&update)
                .bind(&new_roles)
                .bind(at)
                .bind(&key)
                .fetch_one(&mut *tx)
                .await?;
            let remaining: i64 = sqlx::query_scalar(ACTIVE_ADMINS).fetch_one(&mut *tx).await?;
            if remaining == 0 {
                return Err(StoreError::LastAdmin);
            }
            sqlx::query(revoke).bind(at).bind(&after.id).execute(&mut *tx).await?;
            let (was, is) =
                (serde_json::json!({ "roles": before.roles() }), serde_json::json!({ "roles": after.roles() }));
            audit!(tx, at, actor, "user", &after.id, "roles.update", Some(was), Some(is));
            (before, after)
        });
        Ok(pair)
    }

    /// Replaces a user's password hash and ends every session of theirs, in
    /// one transaction: families revoked, token version bumped, audited (the
    /// user as actor). `false` when the user is gone.
    pub async fn change_password(
        &self,
        user_id: &str,
        password_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, sqlx::Error> {
        let at = to_micros(now);
        let update = "UPDATE users SET password_hash = $1, updated_at = $2, token_version = token_version + 1, \
                      tokens_revoked_at = $2 WHERE id = $3 RETURNING username";
        let revoke = "UPDATE token_families SET revoked_at = $1, revoked_reason = 'password changed' \
                      WHERE user_id = $2 AND revoked_at IS NULL";
        Ok(with_write_tx!(&self.store, |tx| {
            let username: Option<String> =
                sqlx::query_scalar(update).bind(password_hash).bind(at).bind(user_id).fetch_optional(&mut *tx).await?;
            if let Some(username) = &username {
                sqlx::query(revoke).bind(at).bind(user_id).execute(&mut *tx).await?;
                audit!(tx, at, (user_id, username.as_str()), "user", user_id, "password.change", None, None);
            }
            username.is_some()
        }))
    }

    /// Signs a user out everywhere, in one transaction: every refresh-token
    /// family revoked, the token version bumped (the gateways refuse the
    /// user's earlier access tokens), the change in the audit trail. `None`
    /// when no user has that username.
    pub async fn revoke_all_sessions(
        &self,
        username: &str,
        actor: (&str, &str),
        now: DateTime<Utc>,
    ) -> Result<Option<UserRecord>, sqlx::Error> {
        let key = username_key(username);
        let at = to_micros(now);
        let bump = format!(
            "UPDATE users SET token_version = token_version + 1, tokens_revoked_at = $1 \
             WHERE username_key = $2 RETURNING {USER_COLUMNS}"
        );
        let revoke = "UPDATE token_families SET revoked_at = $1, revoked_reason = 'signed out everywhere' \
                      WHERE user_id = $2 AND revoked_at IS NULL";
        Ok(with_write_tx!(&self.store, |tx| {
            let user = sqlx::query_as::<_, UserRecord>(&bump).bind(at).bind(&key).fetch_optional(&mut *tx).await?;
            if let Some(user) = &user {
                sqlx::query(revoke).bind(at).bind(&user.id).execute(&mut *tx).await?;
                audit!(tx, at, actor, "user", &user.id, "sessions.revoke", None, None);
            }
            user
        }))
    }

    /// Disables or re-enables an account, in one transaction, as
    /// [`AuthStore::set_roles`] changes roles: the actor must be an active
    /// ADMIN in the store, the last active ADMIN cannot be disabled, the
    /// change is audited. Disabling ends the user's sessions and bumps their
    /// token version (every gateway refuses their access tokens).
    pub async fn set_status(
        &self,
        username: &str,
        active: bool,
        actor: (&str, &str),
        now: DateTime<Utc>,
    ) -> Result<(UserRecord, UserRecord), StoreError> {
        let key = username_key(username);
        let at = to_micros(now);
        let status = if active { "ACTIVE" } else { "DISABLED" };
        let select = format!("SELECT {USER_COLUMNS} FROM users WHERE username_key = $1");
        let enable =
            format!("UPDATE users SET status = $1, updated_at = $2 WHERE username_key = $3 RETURNING {USER_COLUMNS}");
        let disable = format!(
            "UPDATE users SET status = $1, updated_at = $2, token_version = token_version + 1, tokens_revoked_at = $2 \
             WHERE username_key = $3 RETURNING {USER_COLUMNS}"
        );
        let revoke = "UPDATE token_families SET revoked_at = $1, revoked_reason = 'account disabled' \
                      WHERE user_id = $2 AND revoked_at IS NULL";
        let is_pg = matches!(self.store, Store::Postgres(_));
        let pair = with_write_tx!(&self.store, |tx| {
            if is_pg {
                sqlx::query("SELECT pg_advisory_xact_lock(7431001)").execute(&mut *tx).await?;
            }
            require_acting_admin!(tx, actor.0);
            let before = sqlx::query_as::<_, UserRecord>(&select)
                .bind(&key)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::NotFound)?;
            let update = if active || !before.is_active() { &enable } else { &disable };
            let after =
                sqlx::query_as::<_, UserRecord>(update).bind(status).bind(at).bind(&key).fetch_one(&mut *tx).await?;
            if !active {
                let remaining: i64 = sqlx::query_scalar(ACTIVE_ADMINS).fetch_one(&mut *tx).await?;
                if remaining == 0 {
                    return Err(StoreError::LastAdmin);
                }
                sqlx::query(revoke).bind(at).bind(&after.id).execute(&mut *tx).await?;
            }
            let (was, is) =
                (serde_json::json!({ "status": before.status }), serde_json::json!({ "status": after.status }));
            audit!(tx, at, actor, "user", &after.id, "status.update", Some(was), Some(is));
            (before, after)
        });
        Ok(pair)
    }

    /// Starts a session: a new token family and its first refresh token.
    pub async fn create_session(
        &self,
        user_id: &str,
        token_hash: &str,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<String, sqlx::Error> {
        let family_id = uuid::Uuid::now_v7().to_string();
        let (at, expires) = (to_micros(now), to_micros(expires_at));
        with_write_tx!(&self.store, |tx| {
            sqlx::query("INSERT INTO token_families (id, user_id, created_at) VALUES ($1, $2, $3)")
                .bind(&family_id)
                .bind(user_id)
                .bind(at)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO refresh_tokens (token_hash, family_id, issued_at, expires_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(token_hash)
            .bind(&family_id)
            .bind(at)
            .bind(expires)
            .execute(&mut *tx)
            .await?;
            enqueue!(tx, user_id, "LOGIN", at, "{}");
        });
        Ok(family_id)
    }

    /// Spends `old_hash` and stores `new_hash` in its family, if the old token
    /// is live. Of concurrent presentations of one token, the guarded update
    /// lets exactly one through; the others find it spent, which is a replay:
    /// the family is revoked.
    pub async fn rotate_refresh(
        &self,
        old_hash: &str,
        new_hash: &str,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<Rotation, sqlx::Error> {
        let (at, expires) = (to_micros(now), to_micros(expires_at));
        let spend = "UPDATE refresh_tokens SET spent_at = $1 \
                     WHERE token_hash = $2 AND spent_at IS NULL AND expires_at > $1 \
                     AND family_id IN (SELECT id FROM token_families WHERE revoked_at IS NULL) \
                     RETURNING family_id";
        let user = format!(
            "SELECT {} FROM users u JOIN token_families f ON f.user_id = u.id WHERE f.id = $1",
            USER_COLUMNS.split(", ").map(|c| format!("u.{c}")).collect::<Vec<_>>().join(", ")
        );
        let insert =
            "INSERT INTO refresh_tokens (token_hash, family_id, issued_at, expires_at) VALUES ($1, $2, $3, $4)";
        let spent = "SELECT family_id FROM refresh_tokens WHERE token_hash = $1 AND spent_at IS NOT NULL";
        let revoke = "UPDATE token_families SET revoked_at = $1, revoked_reason = 'refresh token reused' \
                      WHERE id = $2 AND revoked_at IS NULL";
        let rotation = with_write_tx!(&self.store, |tx| {
            let family: Option<String> =
                sqlx::query_scalar(spend).bind(at).bind(old_hash).fetch_optional(&mut *tx).await?;
            match family {
                Some(family_id) => {
                    let user = sqlx::query_as::<_, UserRecord>(&user).bind(&family_id).fetch_one(&mut *tx).await?;
                    sqlx::query(insert)
                        .bind(new_hash)
                        .bind(&family_id)
                        .bind(at)
                        .bind(expires)
                        .execute(&mut *tx)
                        .await?;
                    Rotation::Rotated { user: Box::new(user), family_id }
                }
                None => {
                    let replayed: Option<String> =
                        sqlx::query_scalar(spent).bind(old_hash).fetch_optional(&mut *tx).await?;
                    match replayed {
                        Some(family_id) => {
                            sqlx::query(revoke).bind(at).bind(&family_id).execute(&mut *tx).await?;
                            Rotation::Replayed { family_id }
                        }
                        None => Rotation::Refused,
                    }
                }
            }
        });
        Ok(rotation)
    }

    /// Revokes the family of `token_hash` if it belongs to `user_id`.
    pub async fn revoke_session(
        &self,
        token_hash: &str,
        user_id: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, sqlx::Error> {
        let sql = "UPDATE token_families SET revoked_at = $1, revoked_reason = 'logout' \
                   WHERE revoked_at IS NULL AND user_id = $2 \
                   AND id IN (SELECT family_id FROM refresh_tokens WHERE token_hash = $3)";
        let at = to_micros(now);
        let done = with_pool!(&self.store, |pool| {
            sqlx::query(sql).bind(at).bind(user_id).bind(token_hash).execute(pool).await.map(|r| r.rows_affected())
        })?;
        Ok(done > 0)
    }

    pub async fn signing_keys(&self) -> Result<Vec<KeyRecord>, sqlx::Error> {
        let sql = "SELECT kid, secret_key, public_key, created_at, active_from FROM signing_keys \
                   WHERE revoked_at IS NULL ORDER BY active_from DESC, created_at DESC";
        with_pool!(&self.store, |pool| sqlx::query_as::<_, KeyRecord>(sql).fetch_all(pool).await)
    }

    /// The kids of every revoked key.
    pub async fn revoked_kids(&self) -> Result<Vec<String>, sqlx::Error> {
        let sql = "SELECT kid FROM signing_keys WHERE revoked_at IS NOT NULL ORDER BY kid";
        with_pool!(&self.store, |pool| sqlx::query_scalar(sql).fetch_all(pool).await)
    }

    /// Revokes a signing key, in one transaction: when no other key would be
    /// signing now, `successor` (a fresh key, active at once) is added, so a
    /// signing key always remains; audited. `NotFound` for an unknown or
    /// already revoked key; `ActorNotAdmin` as for role changes.
    pub async fn revoke_key(
        &self,
        kid: &str,
        successor: &KeyRecord,
        actor: (&str, &str),
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let at = to_micros(now);
        let revoke = "UPDATE signing_keys SET revoked_at = $1 WHERE kid = $2 AND revoked_at IS NULL";
        let others = "SELECT COUNT(*) FROM signing_keys WHERE revoked_at IS NULL AND active_from <= $1";
        let insert = "INSERT INTO signing_keys (kid, secret_key, public_key, created_at, active_from) \
                      VALUES ($1, $2, $3, $4, $5)";
        Ok(with_write_tx!(&self.store, |tx| {
            require_acting_admin!(tx, actor.0);
            if sqlx::query(revoke).bind(at).bind(kid).execute(&mut *tx).await?.rows_affected() == 0 {
                return Err(StoreError::NotFound);
            }
            let signing: i64 = sqlx::query_scalar(others).bind(at).fetch_one(&mut *tx).await?;
            let replaced = signing == 0;
            if replaced {
                sqlx::query(insert)
                    .bind(&successor.kid)
                    .bind(&successor.secret_key)
                    .bind(&successor.public_key)
                    .bind(successor.created_at)
                    .bind(successor.active_from)
                    .execute(&mut *tx)
                    .await?;
            }
            let after = serde_json::json!({ "successor": replaced.then_some(&successor.kid) });
            audit!(tx, at, actor, "signing_key", kid, "key.revoke", None, Some(after));
            replaced
        }))
    }

    pub async fn insert_key(&self, key: &KeyRecord) -> Result<(), sqlx::Error> {
        let sql = "INSERT INTO signing_keys (kid, secret_key, public_key, created_at, active_from) \
                   VALUES ($1, $2, $3, $4, $5)";
        with_pool!(&self.store, |pool| {
            sqlx::query(sql)
                .bind(&key.kid)
                .bind(&key.secret_key)
                .bind(&key.public_key)
                .bind(key.created_at)
                .bind(key.active_from)
                .execute(pool)
                .await
                .map(drop)
        })
    }

    /// Activities due for delivery, oldest first.
    pub async fn due_outbox(&self, now: i64, limit: i64) -> Result<Vec<OutboxRow>, sqlx::Error> {
        let sql = "SELECT id, user_id, type, occurred_at, attributes, attempts FROM outbox \
                   WHERE delivered_at IS NULL AND next_attempt_at <= $1 ORDER BY next_attempt_at, id LIMIT $2";
        with_pool!(&self.store, |pool| sqlx::query_as::<_, OutboxRow>(sql).bind(now).bind(limit).fetch_all(pool).await)
    }

    pub async fn outbox_delivered(&self, ids: &[String], now: i64) -> Result<(), sqlx::Error> {
        with_write_tx!(&self.store, |tx| {
            for id in ids {
                sqlx::query("UPDATE outbox SET delivered_at = $1, last_error = NULL WHERE id = $2")
                    .bind(now)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
        });
        Ok(())
    }

    /// Records a failed attempt; the row is due again at `retry_at`.
    pub async fn outbox_failed(&self, id: &str, retry_at: i64, error: &str) -> Result<(), sqlx::Error> {
        let sql = "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = $1, last_error = $2 WHERE id = $3";
        with_pool!(&self.store, |pool| sqlx::query(sql)
            .bind(retry_at)
            .bind(error)
            .bind(id)
            .execute(pool)
            .await
            .map(drop))
    }

    /// Activities not yet delivered.
    pub async fn outbox_pending(&self) -> Result<i64, sqlx::Error> {
        let sql = "SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL";
        with_pool!(&self.store, |pool| sqlx::query_scalar(sql).fetch_one(pool).await)
    }
}

/// Escapes `%`, `_` and `\` for a `LIKE ... ESCAPE '\'` pattern.
fn escape_like(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
