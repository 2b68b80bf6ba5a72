//! The README's quick start: a visit counter in a Flask-compatible session.
use axum::{Router, routing::get};
use hipflask_tower::{Session, SessionLayer};

async fn index(session: Session) -> String {
    let visits = session.get::<u64>("visits").unwrap_or(0) + 1;
    session.insert("visits", visits).expect("an integer always fits");
    format!("Total visits: {visits}")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = hipflask::Config::builder().secret_key(std::env::var("SECRET_KEY")?).build()?;
    let app = Router::new().route("/", get(index)).layer(SessionLayer::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:5000").await?;
    axum::serve(listener, app).await?;
    Ok(())
}
