//! DNS interceptor.

use anyhow::Result;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use crate::state::State;

pub async fn run(
    _udp: Vec<std::net::UdpSocket>,
    _tcp: Vec<std::net::TcpListener>,
    _state: Arc<State>,
    cancel: CancellationToken,
) -> Result<()> {
    cancel.cancelled().await;
    Ok(())
}
