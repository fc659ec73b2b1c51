//! `meshtrust demo`: two meshes on one machine, federating, with workloads talking mTLS through
//! sidecars across them.

pub mod echo;

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
            None => {
                let _ = keep_running;
                anyhow::bail!("the two-mesh demo needs the sidecar (not merged yet)")
            }
        }
    })
}
