//! A minimal Workload API client over a unix socket (the `authsec-agent api` commands use it;
//! applications use the SDK or any SPIFFE library).

use std::path::{Path, PathBuf};

use authsec_api::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use tonic::transport::{Channel, Endpoint, Uri};

/// The socket path from `SPIFFE_ENDPOINT_SOCKET` (`unix:///abs/path` or `unix:/abs/path`).
pub fn endpoint_from_env() -> Option<PathBuf> {
    let v = std::env::var("SPIFFE_ENDPOINT_SOCKET").ok()?;
    let p = v
        .strip_prefix("unix://")
        .or_else(|| v.strip_prefix("unix:"))?;
    Some(PathBuf::from(p))
}

/// A channel to the Workload API at `socket`.
pub async fn connect(socket: &Path) -> anyhow::Result<SpiffeWorkloadApiClient<Channel>> {
    let path = socket.to_path_buf();
    let ch = Endpoint::try_from("http://localhost")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await?;
    Ok(SpiffeWorkloadApiClient::new(ch))
}

/// A request with the security header.
pub fn request<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        authsec_api::workload::SECURITY_HEADER,
        tonic::metadata::MetadataValue::from_static("true"),
    );
    r
}
