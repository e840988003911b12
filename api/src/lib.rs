//! The agent's gRPC API (tonic) and the unix-socket plumbing its clients share.
#![allow(clippy::pedantic, reason = "generated code")]

use std::path::{Path, PathBuf};

pub mod attachment;
pub mod naming;

pub mod v1 {
    tonic::include_proto!("moat.v1");
}

pub use v1::agent_client::AgentClient;
pub use v1::agent_server::{Agent, AgentServer};

/// Where the agent listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/var/run/moat/agent.sock";

/// Connects to the agent's unix socket.
///
/// # Errors
/// When the socket does not exist or nobody accepts on it.
pub async fn connect(socket: &Path) -> Result<AgentClient<tonic::transport::Channel>, tonic::transport::Error> {
    let socket: PathBuf = socket.to_path_buf();
    // The URI is required by tonic but unused: the connector below dials the socket.
    let channel = tonic::transport::Endpoint::from_static("http://moat-agent.local")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await?;
    Ok(AgentClient::new(channel))
}
