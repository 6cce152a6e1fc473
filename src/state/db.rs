//! One database, three backends: connecting, classifying failures (retry or give up), retrying
//! with backoff, and running statements. Every part of eventflow that keeps something in a
//! database goes through here: the `sql` sink, the `kube_events` checkpoint, the durable
//! webhook's queue and dead letters, `mark_rows`. SQL comes from sea-query (values are always
//! bound parameters); sqlx runs it. Introspection queries bind the table name too.

use std::str::FromStr;
use std::time::Duration;

use sea_query::{MysqlQueryBuilder, PostgresQueryBuilder, SqliteQueryBuilder};
use sea_query_sqlx::SqlxBinder;
use sqlx::{AssertSqlSafe, Row};

/// Which server a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    MySql,
}

/// A connection pool to one of the backends.
#[derive(Debug, Clone)]
pub enum Db {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
    MySql(sqlx::MySqlPool),
}

/// A failure, classified by what the sink should do about it.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The server is unreachable or overloaded, or the statement lost a race: retry later.
    /// (The server's own message, not sqlx's text: PostgreSQL's ends with "at line N" of the
    /// server's source, which reads like a line of the pipeline file.)
    #[error("database unavailable: {}", explain(.0))]
    Transient(#[source] sqlx::Error),
    /// The statement (or a value in it) is wrong: retrying the same thing will fail again.
    #[error("{}", explain(.0))]
    Permanent(#[source] sqlx::Error),
}

impl DbError {
    pub fn is_transient(&self) -> bool {
        matches!(self, DbError::Transient(_))
    }
}

/// Sorts a driver error into retry-later or give-up.
pub(crate) fn classify(e: sqlx::Error) -> DbError {
    use sqlx::Error as E;
    let transient = match &e {
        E::Io(_)
        | E::Tls(_)
        | E::PoolTimedOut
        | E::PoolClosed
        | E::WorkerCrashed
        | E::Protocol(_) => true,
        E::Database(db) => {
            let code = db.code().map(|c| c.to_string()).unwrap_or_default();
            let code = code.as_str();
            // PostgreSQL: connection exceptions, shutdown, out of resources,
            // serialization failure, deadlock.
            let pg = code.starts_with("08")
                || code.starts_with("57P")
                || code.starts_with("53")
                || code == "40001"
                || code == "40P01";
            // MySQL/MariaDB: lock wait, deadlock, gone away, lost connection, too many
            // connections, shutdown, killed; and a generic HY000 about a connection.
            // (sqlx's `code()` is the SQLSTATE there; the server's error number is separate.)
            let mysql = mysql_error_number(db.as_ref())
                .is_some_and(|n| [1205, 1213, 2006, 2013, 1040, 1053, 1927].contains(&n))
                || (code == "HY000" && db.message().to_lowercase().contains("connection"));
            // SQLite: busy, locked.
            let sqlite = code == "5" || code == "6";
            pg || mysql || sqlite
        }
        _ => false,
    };
    if transient {
        DbError::Transient(e)
    } else {
        DbError::Permanent(e)
    }
}

/// The SQLite page cache of each connection to the state database (checkpoints, queues, dead
/// letters): 4 MiB. Its pools are small (2 to 5 connections), so the state database costs at
/// most 8 MiB per `kube_events` source and 20 MiB per durable sink.
pub const STATE_CACHE_BYTES: u64 = 4 * 1024 * 1024;

/// Runs a database operation until it succeeds or fails for good. A transient failure is
/// retried after the next delay of `backoff` if `retry` (told the error and the delay) agrees;
/// otherwise, and on a permanent failure, the error is returned.
pub async fn retrying<T, F, Fut>(
    backoff: &mut crate::backoff::Backoff,
    mut retry: impl FnMut(&DbError, Duration) -> bool,
    mut op: F,
) -> Result<T, DbError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, DbError>>,
{
    loop {
        match op().await {
            Err(e) if e.is_transient() => {
                let delay = backoff.next_delay();
                if !retry(&e, delay) {
                    return Err(e);
                }
                tokio::time::sleep(delay).await;
            }
            done => return done,
        }
    }
}

/// The MySQL/MariaDB server error number of a database error (None on other backends).
pub fn mysql_error_number(e: &dyn sqlx::error::DatabaseError) -> Option<u16> {
    e.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
        .map(sqlx::mysql::MySqlDatabaseError::number)
}

/// Checks that a table name is a plain SQL identifier.
pub fn valid_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 63
}

/// Names the backend of a URL (`mariadb://` is MySQL).
pub fn backend_of(url: &str) -> Option<Backend> {
    // A URL has a scheme: `sqlite` alone is not a database URL (sqlx would open a file of
    // that name in the working directory).
    let (scheme, _) = url.split_once(':')?;
    match scheme {
        "sqlite" => Some(Backend::Sqlite),
        "postgres" | "postgresql" => Some(Backend::Postgres),
        "mysql" | "mariadb" => Some(Backend::MySql),
        _ => None,
    }
}

/// A driver error as a person reads it: a server's own message without the line of the
/// server's source it came from, an I/O error with its cause, anything else with its chain.
fn explain(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => d.message().to_string(),
        sqlx::Error::Configuration(c) => c.to_string(),
        e => crate::types::error_chain(e),
    }
}

/// Why a pool could not open a connection in time: one direct attempt, whose error the pool
/// swallows (it retries until its timeout and reports only that).
async fn cause_of_timeout(url: &str, timeout: Duration) -> Option<String> {
    use sqlx::Connection;
    let attempt = async {
        match backend_of(url)? {
            Backend::Postgres => sqlx::PgConnection::connect(url).await.err(),
            Backend::MySql => {
                sqlx::MySqlConnection::connect(&url.replacen("mariadb://", "mysql://", 1))
                    .await
                    .err()
            }
            Backend::Sqlite => sqlx::SqliteConnection::connect(url).await.err(),
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Some(e)) => Some(explain(&e)),
        Ok(None) => None,
        Err(_) => Some("no answer".to_string()),
    }
}

/// Hides the secrets of a URL for messages (see [`crate::redact::url`]).
pub fn redact(url: &str) -> String {
    crate::redact::url(url)
}

/// A database URL that cannot be used. URLs in these errors are redacted.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error(
        "unsupported database URL `{0}` (expected sqlite://, postgres://, mysql:// or mariadb://)"
    )]
    Unsupported(String),
    /// `sqlite://` without a file, or an in-memory database: each pooled connection would have
    /// a database of its own, and nothing would outlive the process.
    #[error(
        "`{0}` names no SQLite file (write `sqlite://path/to/file.db`; in-memory databases are not supported)"
    )]
    NoFile(String),
    #[error("`{url}` is not a valid URL: {source}")]
    Invalid {
        url: String,
        #[source]
        source: sqlx::Error,
    },
}

/// A database that could not be reached (or a URL that cannot be used).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Url(#[from] UrlError),
    /// `why` is the cause as a person reads it (refused, no such host, bad password).
    #[error("cannot connect to {url}: {why}")]
    Unreachable {
        url: String,
        why: String,
        #[source]
        source: sqlx::Error,
    },
}

/// A store (a table set in the state database) that could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("cannot create the {what}: {source}")]
    Schema {
        what: &'static str,
        #[source]
        source: DbError,
    },
}

/// Checks a database URL without connecting: a known scheme, and options the driver parses.
pub fn check_url(url: &str) -> Result<(), UrlError> {
    let bad = |e: sqlx::Error| UrlError::Invalid {
        url: redact(url),
        source: e,
    };
    match backend_of(url) {
        Some(Backend::Sqlite) => {
            let path = url
                .split_once("://")
                .map_or("", |(_, rest)| rest.split('?').next().unwrap_or_default());
            let memory = url.contains(":memory:") || url.contains("mode=memory");
            if path.trim().is_empty() || memory {
                return Err(UrlError::NoFile(redact(url)));
            }
            sqlx::sqlite::SqliteConnectOptions::from_str(url)
                .map(drop)
                .map_err(bad)
        }
        Some(Backend::Postgres) => sqlx::postgres::PgConnectOptions::from_str(url)
            .map(drop)
            .map_err(bad),
        Some(Backend::MySql) => {
            sqlx::mysql::MySqlConnectOptions::from_str(&url.replacen("mariadb://", "mysql://", 1))
                .map(drop)
                .map_err(bad)
        }
        None => Err(UrlError::Unsupported(redact(url))),
    }
}

impl Db {
    /// [`Db::connect_with_cache`] with the state database's SQLite page cache
    /// ([`STATE_CACHE_BYTES`] per connection).
    pub async fn connect(url: &str, max_conns: u32, timeout: Duration) -> Result<Db, ConnectError> {
        Db::connect_with_cache(url, max_conns, timeout, STATE_CACHE_BYTES).await
    }

    /// Opens a pool of at most `max_conns` connections, waiting up to `timeout` for the first.
    /// An error says why the server could not be reached (refused, no such host, bad
    /// password), not only that the pool timed out. On SQLite each connection's page cache is
    /// at most `cache_bytes` (SQLite's cache is per connection: the pool's bound is `max_conns`
    /// times this).
    pub async fn connect_with_cache(
        url: &str,
        max_conns: u32,
        timeout: Duration,
        cache_bytes: u64,
    ) -> Result<Db, ConnectError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        if backend_of(url).is_none() {
            return Err(UrlError::Unsupported(redact(url)).into());
        }
        // SQLite: several pools opening one new file at once (replicas of a test, stages of
        // one pipeline) can find it locked while another switches it to WAL; that answer comes
        // without SQLite's busy wait, so wait here, within `timeout`.
        let deadline = std::time::Instant::now() + timeout;
        let mut opened = Db::open_pool(url, max_conns, timeout, cache_bytes).await;
        while let Err(sqlx::Error::Database(d)) = &opened
            && matches!(d.code().as_deref(), Some("5" | "6"))
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
            opened = Db::open_pool(url, max_conns, timeout, cache_bytes).await;
        }
        match opened {
            Ok(db) => Ok(db),
            Err(source) => {
                let why = match &source {
                    sqlx::Error::PoolTimedOut => match cause_of_timeout(url, timeout).await {
                        Some(cause) => format!("{cause} (tried for {} s)", timeout.as_secs_f64()),
                        None => explain(&source),
                    },
                    e => explain(e),
                };
                Err(ConnectError::Unreachable {
                    url: redact(url),
                    why,
                    source,
                })
            }
        }
    }

    async fn open_pool(
        url: &str,
        max_conns: u32,
        timeout: Duration,
        cache_bytes: u64,
    ) -> Result<Db, sqlx::Error> {
        match backend_of(url) {
            Some(Backend::Sqlite) => {
                let opts = sqlx::sqlite::SqliteConnectOptions::from_str(url)
                    ?
                    .create_if_missing(true)
                    .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                    .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
                    // A bounded page cache per connection (a negative cache_size is KiB).
                    .pragma("cache_size", format!("-{}", (cache_bytes / 1024).max(64)))
                    // Checkpoint the WAL every ~40 MB instead of every 4 MB: a checkpoint
                    // fsyncs the database file, and at a few thousand events a second the
                    // default checkpoints (and stalls) many times a second.
                    .pragma("wal_autocheckpoint", "10000")
                    .busy_timeout(Duration::from_secs(5));
                let pool = sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(std::cmp::Ord::max(max_conns, 1))
                    .acquire_timeout(timeout)
                    .connect_with(opts)
                    .await
                    ?;
                Ok(Db::Sqlite(pool))
            }
            Some(Backend::Postgres) => sqlx::postgres::PgPoolOptions::new()
                .max_connections(std::cmp::Ord::max(max_conns, 1))
                .acquire_timeout(timeout)
                .connect(url)
                .await
                .map(Db::Postgres),
            Some(Backend::MySql) => {
                let url = url.replacen("mariadb://", "mysql://", 1);
                sqlx::mysql::MySqlPoolOptions::new()
                    .max_connections(std::cmp::Ord::max(max_conns, 1))
                    .acquire_timeout(timeout)
                    .connect(&url)
                    .await
                    .map(Db::MySql)
            }
            None => Err(sqlx::Error::Configuration(
                format!(
                    "unsupported database URL `{}` (expected sqlite://, postgres://, mysql:// or mariadb://)",
                    redact(url)
                )
                .into(),
            )),
        }
    }

    /// Closes every connection of the pool.
    pub async fn close(&self) {
        match self {
            Db::Sqlite(p) => p.close().await,
            Db::Postgres(p) => p.close().await,
            Db::MySql(p) => p.close().await,
        }
    }

    pub fn backend(&self) -> Backend {
        match self {
            Db::Sqlite(_) => Backend::Sqlite,
            Db::Postgres(_) => Backend::Postgres,
            Db::MySql(_) => Backend::MySql,
        }
    }

    /// Runs one statement (DDL or a query without parameters).
    pub async fn execute_raw(&self, sql: String) -> Result<u64, DbError> {
        let r = match self {
            Db::Sqlite(p) => sqlx::raw_sql(AssertSqlSafe(sql))
                .execute(p)
                .await
                .map(|r| r.rows_affected()),
            Db::Postgres(p) => {
                let mut tries = 0;
                loop {
                    let r = sqlx::raw_sql(AssertSqlSafe(sql.clone()))
                        .execute(p)
                        .await
                        .map(|r| r.rows_affected());
                    tries += 1;
                    match r {
                        Err(e) if tries < 5 && lost_creation_race(&e, &sql) => {
                            // Another process created it at the same moment: look again.
                            tokio::time::sleep(Duration::from_millis(20 * tries)).await;
                        }
                        r => break r,
                    }
                }
            }
            Db::MySql(p) => sqlx::raw_sql(AssertSqlSafe(sql))
                .execute(p)
                .await
                .map(|r| r.rows_affected()),
        };
        r.map_err(classify)
    }

    /// Runs statements built by sea-query in one transaction.
    pub async fn execute_in_tx(
        &self,
        statements: Vec<(String, sea_query_sqlx::SqlxValues)>,
    ) -> Result<u64, DbError> {
        macro_rules! run {
            ($pool:expr) => {{
                let mut tx = $pool.begin().await.map_err(classify)?;
                let mut n = 0;
                for (sql, values) in statements {
                    n += sqlx::query_with(AssertSqlSafe(sql), values)
                        .execute(&mut *tx)
                        .await
                        .map_err(classify)?
                        .rows_affected();
                }
                tx.commit().await.map_err(classify)?;
                Ok(n)
            }};
        }
        match self {
            Db::Sqlite(p) => run!(p),
            Db::Postgres(p) => run!(p),
            Db::MySql(p) => run!(p),
        }
    }

    /// Rows of four columns (text, text, text, integer) selected by one text parameter.
    pub async fn fetch_by_key(
        &self,
        sql: &str,
        key: &str,
    ) -> Result<Vec<(String, String, String, i64)>, DbError> {
        macro_rules! fetch {
            ($pool:expr) => {
                sqlx::query_as::<_, (String, String, String, i64)>(AssertSqlSafe(sql.to_string()))
                    .bind(key)
                    .fetch_all($pool)
                    .await
                    .map_err(classify)
            };
        }
        match self {
            Db::Sqlite(p) => fetch!(p),
            Db::Postgres(p) => fetch!(p),
            Db::MySql(p) => fetch!(p),
        }
    }

    /// The column names of `table` (empty if it does not exist).
    pub async fn columns(&self, table: &str) -> Result<Vec<String>, DbError> {
        macro_rules! names {
            ($pool:expr, $sql:expr) => {
                sqlx::query($sql)
                    .bind(table)
                    .fetch_all($pool)
                    .await
                    .map_err(classify)?
                    .iter()
                    .filter_map(|r| r.try_get::<String, _>(0).ok())
                    .collect::<Vec<String>>()
            };
        }
        let rows = match self {
            Db::Sqlite(p) => names!(p, "SELECT name FROM pragma_table_info(?)"),
            Db::Postgres(p) => names!(
                p,
                // The catalog itself: the information_schema view costs milliseconds to plan.
                "SELECT a.attname::text FROM pg_catalog.pg_attribute a \
                 JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
                 JOIN pg_catalog.pg_namespace s ON s.oid = c.relnamespace \
                 WHERE c.relname = $1 AND s.nspname = current_schema() \
                 AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped"
            ),
            Db::MySql(p) => names!(
                p,
                "SELECT CAST(column_name AS CHAR) FROM information_schema.columns WHERE table_name = ? AND table_schema = DATABASE()"
            ),
        };
        Ok(rows.into_iter().map(|c| c.to_lowercase()).collect())
    }

    /// A sea-query statement as SQL for this backend, with its bound values.
    pub(crate) fn build<Q: SqlxBinder>(&self, q: &Q) -> (String, sea_query_sqlx::SqlxValues) {
        match self.backend() {
            Backend::Sqlite => q.build_sqlx(SqliteQueryBuilder),
            Backend::Postgres => q.build_sqlx(PostgresQueryBuilder),
            Backend::MySql => q.build_sqlx(MysqlQueryBuilder),
        }
    }

    /// Runs a query built by [`Db::build`] and decodes its rows.
    pub(crate) async fn fetch_all<T>(
        &self,
        (sql, values): (String, sea_query_sqlx::SqlxValues),
    ) -> Result<Vec<T>, DbError>
    where
        T: Send
            + Unpin
            + for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
            + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>
            + for<'r> sqlx::FromRow<'r, sqlx::mysql::MySqlRow>,
    {
        macro_rules! fetch {
            ($pool:expr) => {
                sqlx::query_as_with(AssertSqlSafe(sql), values)
                    .fetch_all($pool)
                    .await
            };
        }
        match self {
            Db::Sqlite(p) => fetch!(p),
            Db::Postgres(p) => fetch!(p),
            Db::MySql(p) => fetch!(p),
        }
        .map_err(classify)
    }

    /// A schema statement (create or alter a table, create an index) as SQL for this backend.
    pub(crate) fn schema_sql<S: sea_query::SchemaStatementBuilder>(&self, t: &S) -> String {
        match self.backend() {
            Backend::Sqlite => t.to_string(SqliteQueryBuilder),
            Backend::Postgres => t.to_string(PostgresQueryBuilder),
            Backend::MySql => t.to_string(MysqlQueryBuilder),
        }
    }

    /// Creates an index unless it exists. MySQL has no `CREATE INDEX IF NOT EXISTS` (MariaDB
    /// has): there an existing index answers error 1061 (duplicate key name), which is what
    /// was wanted.
    pub(crate) async fn create_index(
        &self,
        mut index: sea_query::IndexCreateStatement,
    ) -> Result<(), DbError> {
        if self.backend() != Backend::MySql {
            index.if_not_exists();
        }
        match self.execute_raw(self.schema_sql(&index)).await {
            Err(DbError::Permanent(e))
                if e.as_database_error().and_then(mysql_error_number) == Some(1061) =>
            {
                Ok(())
            }
            r => r.map(|_| ()),
        }
    }
}

/// Whether `e` is PostgreSQL's answer to two sessions running the same `CREATE ... IF NOT
/// EXISTS` at once (the check is not atomic with the creation: the loser gets a unique violation
/// on the catalog, or "already exists"). Running the statement again then finds the object.
fn lost_creation_race(e: &sqlx::Error, sql: &str) -> bool {
    let sqlx::Error::Database(d) = e else {
        return false;
    };
    let code = d.code();
    sql.contains("IF NOT EXISTS")
        && (matches!(code.as_deref(), Some("42P07" | "42710"))
            || (code.as_deref() == Some("23505")
                && (d.message().contains("pg_type_typname_nsp_index")
                    || d.message().contains("pg_class_relname_nsp_index"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_and_urls() {
        assert!(valid_identifier("k8s_events"));
        assert!(!valid_identifier("k8s-events"));
        assert!(!valid_identifier("x; DROP TABLE y"));
        assert!(!valid_identifier("1abc"));
        assert_eq!(backend_of("mariadb://u:p@h/db"), Some(Backend::MySql));
        assert_eq!(backend_of("sqlite://x.db"), Some(Backend::Sqlite));
        assert_eq!(backend_of("redis://x"), None);
        // An SQLite URL must name a file: an in-memory database is one per pooled connection.
        for url in [
            "sqlite://",
            "sqlite://?mode=rwc",
            "sqlite::memory:",
            "sqlite://x.db?mode=memory",
        ] {
            assert!(matches!(check_url(url), Err(UrlError::NoFile(_))), "{url}");
        }
        assert!(check_url("sqlite://x.db?mode=rwc").is_ok());
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("sqlite://x.db"), "sqlite://x.db");
    }

    #[test]
    fn url_errors_have_kinds_and_hide_passwords() {
        assert!(matches!(
            check_url("redis://u:pw@h/x"),
            Err(UrlError::Unsupported(u)) if u == "redis://u:***@h/x"
        ));
        assert!(matches!(
            check_url("postgres://u:pw@h:notaport/db"),
            Err(UrlError::Invalid { .. })
        ));
        assert!(check_url("sqlite://x.db").is_ok());
    }

    #[tokio::test]
    async fn an_unreachable_server_is_an_error_that_says_why() {
        let e = Db::connect("postgres://u:pw@127.0.0.1:1/db", 1, Duration::from_secs(1))
            .await
            .expect_err("nothing listens on port 1");
        let ConnectError::Unreachable { url, why, .. } = &e else {
            panic!("{e:?}");
        };
        assert_eq!(url, "postgres://u:***@127.0.0.1:1/db");
        assert!(why.contains("refused"), "{why}");
        assert!(
            std::error::Error::source(&e).is_some(),
            "the driver's error is kept"
        );
    }
}
