//! Calls to the node agent (gRPC over its unix socket). Each CNI invocation is a short
//! process, so a current-thread runtime is built per call site.
use std::future::Future;
use std::path::Path;

use moat_api::v1::AttachmentRef;
use moat_api::AgentClient;
use tonic::transport::Channel;

use crate::error::{code, CniError, Result};

pub type Client = AgentClient<Channel>;

/// Runs `f` against the agent. An unreachable agent is `TRY_AGAIN_LATER` (11): the
/// runtime retries once the agent is back.
///
/// # Errors
/// Whatever `f` returns, or `TRY_AGAIN_LATER` when the agent does not answer.
pub fn with_agent<T, F, Fut>(socket: &Path, f: F) -> Result<T>
where
    F: FnOnce(Client) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::new(code::IO_FAILURE, "starting the async runtime", e.to_string()))?;
    rt.block_on(async {
        let client = tokio::time::timeout(std::time::Duration::from_secs(5), moat_api::connect(socket))
            .await
            .map_err(|_| unreachable_agent(socket, "timed out"))?
            .map_err(|e| {
                unreachable_agent(
                    socket,
                    &format!(
                        "{e}: {}",
                        std::error::Error::source(&e)
                            .map(ToString::to_string)
                            .unwrap_or_default()
                    ),
                )
            })?;
        f(client).await
    })
}

fn unreachable_agent(socket: &Path, why: &str) -> CniError {
    CniError::new(
        code::TRY_AGAIN_LATER,
        "moat-agent is not reachable",
        format!("socket {}: {why}", socket.display()),
    )
}

/// Maps an agent reply error: unavailable → try again later, else agent error.
#[must_use]
pub fn status_error(what: &str, s: &tonic::Status) -> CniError {
    let code = match s.code() {
        tonic::Code::Unavailable => code::TRY_AGAIN_LATER,
        tonic::Code::ResourceExhausted => code::IO_FAILURE,
        _ => code::AGENT_ERROR,
    };
    CniError::new(code, what.to_string(), s.message().to_string())
}

#[must_use]
pub fn attachment(container_id: &str, ifname: &str) -> AttachmentRef {
    AttachmentRef {
        container_id: container_id.into(),
        ifname: ifname.into(),
    }
}
