//! The HTTP server (axum on tokio): routes, start-up, graceful shutdown.

pub mod api;
pub mod default_model;
pub mod metrics;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::engine::{Engine, EngineOptions, Snapshot};

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Flags of `genrec serve`; each can also be set with `GENREC_<NAME>`.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Model folder (config.json, model.safetensors, genrec.json); default: the embedded demo model.
    #[arg(long, env = "GENREC_MODEL")]
    pub model: Option<PathBuf>,
    /// Catalog folder (default: the one named by the model's genrec.json).
    #[arg(long, env = "GENREC_CATALOG")]
    pub catalog: Option<PathBuf>,
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, env = "GENREC_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Beam width of the search (raised to k for larger requests).
    #[arg(long, env = "GENREC_BEAM", default_value_t = 20)]
    pub beam: usize,
}

/// Shared state of the handlers.
pub struct AppState {
    pub engine: Arc<Engine>,
    pub metrics: PrometheusHandle,
}

/// The application's routes.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/recommend", post(api::recommend))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(api::metrics_text))
        .fallback(api::not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Loads the model and catalog the flags name (or the embedded default).
pub fn load_snapshot(args: &ServeArgs) -> Result<Snapshot> {
    let dev = candle_core::Device::Cpu;
    match &args.model {
        Some(dir) => Ok(Snapshot::load(dir, args.catalog.as_deref(), &dev)?),
        None => {
            let (model, catalog) = default_model::load(&dev).context("loading the embedded default model")?;
            Ok(Snapshot::new(model, catalog)?)
        }
    }
}

/// Runs the server until SIGINT/SIGTERM.
pub fn run(args: ServeArgs) -> Result<()> {
    let snapshot = load_snapshot(&args)?;
    tracing::info!(
        model = %snapshot.model.label(),
        items = snapshot.catalog.len(),
        "model loaded"
    );
    let engine = Arc::new(Engine::new(Some(snapshot), EngineOptions { beam: args.beam.max(1) }));
    let state = Arc::new(AppState { engine, metrics: metrics::handle() });
    if let Some(s) = state.engine.snapshot() {
        ::metrics::gauge!(metrics::MODEL_INFO, "model" => s.model.label()).set(1.0);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.addr)
            .await
            .with_context(|| format!("binding {}", args.addr))?;
        let local = listener.local_addr()?;
        // tests and scripts read this line to find the port
        println!("genrec listening on http://{local}");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        axum::serve(listener, router(state)).with_graceful_shutdown(shutdown_signal()).await?;
        tracing::info!("server stopped");
        Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}
