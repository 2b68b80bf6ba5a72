//! `hipflask`: inspect and make Flask session cookies from the shell.
//!
//! ```text
//! hipflask cookie sign --secret KEY [--timestamp UNIX] JSON
//! hipflask cookie decode --secret KEY [--fallback KEY]... [--max-age SECONDS] [--now UNIX] COOKIE
//! hipflask cookie decode --no-verify COOKIE
//! ```
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
    let Command::Cookie(command) = cli.command;
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
