//! `meshtrust demo`: two meshes on one machine, federating, with workloads talking mTLS through
//! sidecars across them.

pub mod echo;
pub mod meshes;
pub mod sidecars;
pub mod story;

use crate::cli::DemoCommand;

/// Runs the demo, or one of its workloads.
///
/// # Errors
/// When a step fails; the error says which.
pub fn run(keep_running: bool, command: Option<DemoCommand>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match command {
            Some(DemoCommand::Echo { listen }) => {
                let listener = tokio::net::TcpListener::bind(listen).await?;
                println!("echo: listening on {listen}");
                let cancel = tokio_util::sync::CancellationToken::new();
                let stop = cancel.clone();
                tokio::spawn(async move {
                    let _ = crate::signal::shutdown_signal().await;
                    stop.cancel();
                });
                echo::serve_echo(listener, cancel).await;
                Ok(())
            }
            Some(DemoCommand::Call { connect, message }) => {
                let answer = echo::call(&connect, &message).await?;
                println!("{answer}");
                Ok(())
            }
            None => two_meshes(keep_running).await,
        }
    })
}

/// The full demo in a fresh temp folder, removed at the end.
async fn two_meshes(keep_running: bool) -> anyhow::Result<()> {
    let work = tempfile::Builder::new()
        .prefix("meshtrust-demo-")
        .tempdir()?;
    println!(
        "meshtrust demo: two meshes, mesh-a.test and mesh-b.test, on this machine (work folder {})",
        work.path().display()
    );
    let running = match story::run(work.path()).await {
        Ok(running) => running,
        Err(e) => {
            println!("demo: FAILED: {}", crate::commands::describe(&e));
            return Err(e);
        }
    };
    if keep_running {
        // Caught before the endpoints are printed: a stop sent on reading them is graceful.
        let signals = crate::signal::ShutdownSignals::install()?;
        running.print_endpoints();
        signals.recv().await;
        println!("stopping");
    }
    running.shutdown().await;
    Ok(())
}
