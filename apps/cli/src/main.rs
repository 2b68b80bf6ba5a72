//! `hipflask`: inspect and make Flask session cookies from the shell.
//!
//! ```text
//! hipflask cookie sign --secret KEY [--timestamp UNIX] JSON
//! hipflask cookie decode --secret KEY [--fallback KEY]... [--max-age SECONDS] [--now UNIX] COOKIE
//! hipflask cookie decode --no-verify COOKIE
//! hipflask sessions list|cleanup|migrate --store URL
//! hipflask sessions show|delete --store URL ID
//! ```
//!
//! `--store` takes `sqlite://PATH`, `file://DIR`, `redis://HOST:PORT`,
//! `postgres://...` or `mysql://...` and falls back to `SESSION_DATABASE_URL`.
//!
//! Exit codes: 0 success, 1 the cookie or JSON was rejected (one line on
//! stderr says why), 2 a usage error such as a missing secret.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use hipflask::{CookieCodec, CookieError, DEFAULT_LIFETIME, SecretKey};

#[derive(Parser)]
#[command(name = "hipflask", version, about = "Flask-compatible session tools")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sign, decode and verify Flask session cookies.
    #[command(subcommand)]
    Cookie(CookieCommand),
    /// Inspect and manage server-side sessions in a store.
    Sessions {
        /// The store: sqlite://PATH, file://DIR, redis://HOST:PORT, postgres://... or mysql://...
        #[arg(long, env = "SESSION_DATABASE_URL", global = true)]
        store: Option<String>,
        #[command(subcommand)]
        command: SessionsCommand,
    },
}

#[derive(Subcommand)]
enum SessionsCommand {
    /// Print the ids of all live sessions, one per line.
    List,
    /// Print a session as Flask's tagged JSON, with its times.
    Show {
        /// The session id (one in 64 starts with `-`: taken as the id, not an option).
        #[arg(allow_hyphen_values = true)]
        id: String,
    },
    /// Delete a session.
    Delete {
        /// The session id (one in 64 starts with `-`: taken as the id, not an option).
        #[arg(allow_hyphen_values = true)]
        id: String,
    },
    /// Delete every expired session.
    Cleanup,
    /// Create or upgrade the store's schema.
    Migrate,
}

#[derive(Subcommand)]
enum CookieCommand {
    /// Print the cookie value Flask would set for a session given as tagged JSON.
    Sign {
        /// The app's SECRET_KEY.
        #[arg(long, env = "SECRET_KEY", hide_env_values = true)]
        secret: Option<String>,
        /// Signing time in Unix seconds (default: now).
        #[arg(long)]
        timestamp: Option<u64>,
        /// The session as Flask's tagged JSON, e.g. `{"cart":{" t":[1,2]},"user":"Tom"}`.
        json: String,
    },
    /// Verify a cookie and print its session as Flask's tagged JSON.
    Decode {
        /// The app's SECRET_KEY.
        #[arg(long, env = "SECRET_KEY", hide_env_values = true)]
        secret: Option<String>,
        /// An older key still accepted (SECRET_KEY_FALLBACKS); repeatable.
        #[arg(long = "fallback", value_name = "KEY")]
        fallbacks: Vec<String>,
        /// Maximum age in seconds (PERMANENT_SESSION_LIFETIME; default 31 days).
        #[arg(long, default_value_t = DEFAULT_LIFETIME.as_secs())]
        max_age: u64,
        /// The verifier's clock in Unix seconds (default: now).
        #[arg(long)]
        now: Option<u64>,
        /// Print the payload without checking signature or age (debugging only).
        #[arg(long, conflicts_with_all = ["secret", "fallbacks"])]
        no_verify: bool,
        /// The cookie value (what follows `session=`).
        cookie: String,
    },
}

enum Failure {
    Usage(String),
    Rejected(String),
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn key(secret: Option<String>) -> Result<SecretKey, Failure> {
    let secret = secret.ok_or_else(|| Failure::Usage("no secret key: pass --secret KEY or set SECRET_KEY".into()))?;
    SecretKey::new(secret).map_err(|e| Failure::Usage(e.to_string()))
}

fn describe(e: &CookieError) -> String {
    match e {
        CookieError::BadSignature => "bad signature: the cookie was not signed with this key, or was changed".into(),
        other => other.to_string(),
    }
}

fn run(cli: Cli) -> Result<String, Failure> {
    let command = match cli.command {
        Command::Cookie(command) => command,
        Command::Sessions { store, command } => return sessions(store, command),
    };
    match command {
        CookieCommand::Sign { secret, timestamp, json } => {
            let key = key(secret)?;
            let session = hipflask::parse_tagged_json(&json)
                .map_err(|e| Failure::Rejected(format!("invalid session JSON: {e}")))?;
            let codec = CookieCodec::new(&key, &[], DEFAULT_LIFETIME.as_secs());
            Ok(codec.encode(&session, timestamp.unwrap_or_else(now)))
        }
        CookieCommand::Decode { no_verify: true, cookie, .. } => {
            eprintln!("warning: signature and age NOT verified; anyone can forge this content");
            let session = CookieCodec::decode_unverified(cookie.trim()).map_err(|e| Failure::Rejected(describe(&e)))?;
            Ok(hipflask::to_tagged_json(&session))
        }
        CookieCommand::Decode { secret, fallbacks, max_age, now: at, cookie, .. } => {
            let key = key(secret)?;
            let fallbacks = fallbacks
                .into_iter()
                .map(SecretKey::new)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Failure::Usage(format!("--fallback: {e}")))?;
            let codec = CookieCodec::new(&key, &fallbacks, max_age);
            let session =
                codec.decode(cookie.trim(), at.unwrap_or_else(now)).map_err(|e| Failure::Rejected(describe(&e)))?;
            Ok(hipflask::to_tagged_json(&session))
        }
    }
}

fn sessions(url: Option<String>, command: SessionsCommand) -> Result<String, Failure> {
    use hipflask::{SessionId, Store};
    let url = url.ok_or_else(|| {
        Failure::Usage("no store: pass --store sqlite://PATH (or file://DIR) or set SESSION_DATABASE_URL".into())
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| Failure::Rejected(format!("cannot start: {e}")))?;
    let failed = |e: hipflask::Error| Failure::Rejected(format!("{url}: {e}"));
    let parse = |id: &str| SessionId::parse(id).ok_or_else(|| Failure::Rejected(format!("{id:?} is not a session id")));
    runtime.block_on(async {
        let store: Box<dyn Store> = if let Some(path) = url.strip_prefix("sqlite://") {
            Box::new(hipflask_sqlite::SqliteStore::open(path).await.map_err(failed)?)
        } else if let Some(dir) = url.strip_prefix("file://") {
            Box::new(hipflask_filesystem::FileStore::open(dir).await.map_err(failed)?)
        } else if url.starts_with("redis://") || url.starts_with("rediss://") {
            Box::new(hipflask_redis::RedisStore::connect(&url).await.map_err(failed)?)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Box::new(hipflask_sql::PostgresStore::connect(&url).await.map_err(failed)?)
        } else if url.starts_with("mysql://") || url.starts_with("mariadb://") {
            Box::new(
                hipflask_sql::MySqlStore::connect(&url.replacen("mariadb://", "mysql://", 1)).await.map_err(failed)?,
            )
        } else {
            return Err(Failure::Usage(format!(
                "unsupported store URL {url:?}: use sqlite://PATH, file://DIR, redis://, postgres:// or mysql://"
            )));
        };
        let now = now();
        match command {
            SessionsCommand::List => {
                let ids = store.list(now).await.map_err(failed)?;
                Ok(ids.iter().map(SessionId::as_str).collect::<Vec<_>>().join("\n"))
            }
            SessionsCommand::Show { id } => {
                let sid = parse(&id)?;
                let record = store.load(&sid, now).await.map_err(failed)?;
                let record = record.ok_or_else(|| Failure::Rejected(format!("no live session {id}")))?;
                Ok(format!(
                    "{}\ncreated: {}\nexpires: {}",
                    hipflask::to_tagged_json(&record.data),
                    fmt_time(record.created_at),
                    fmt_time(record.expires_at)
                ))
            }
            SessionsCommand::Delete { id } => {
                let sid = parse(&id)?;
                match store.delete(&sid).await.map_err(failed)? {
                    true => Ok(format!("deleted {id}")),
                    false => Err(Failure::Rejected(format!("no session {id}"))),
                }
            }
            SessionsCommand::Cleanup => {
                let n = store.delete_expired(now).await.map_err(failed)?;
                Ok(format!("removed {n} expired sessions"))
            }
            SessionsCommand::Migrate if url.starts_with("sqlite://") => {
                Ok(format!("schema version {}", hipflask_sqlite::SCHEMA_VERSION))
            }
            SessionsCommand::Migrate
                if url.starts_with("postgres") || url.starts_with("mysql") || url.starts_with("mariadb") =>
            {
                // Connecting ran the migration.
                Ok("schema up to date".into())
            }
            SessionsCommand::Migrate => Ok("nothing to migrate".into()),
        }
    })
}

fn fmt_time(unix: u64) -> String {
    hipflask::DateTime::from_unix(unix as i64).map_or_else(|| unix.to_string(), |d| d.to_string())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(Failure::Rejected(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(1)
        }
        Err(Failure::Usage(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}
