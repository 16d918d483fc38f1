//! `fovea mcp`: an MCP server on stdin/stdout for desktop agents (Claude Desktop, Claude
//! Code, Cursor start MCP servers this way). It is a client of a node: the MCP server is
//! the node's own ([`fovea_node::mcp::McpServer`], the one its HTTP endpoint serves), over
//! a [`CatalogSource`] whose entries are the realm's as `TOOLS` lists them and whose calls are
//! mesh calls made through the SDK. So an agent sees the same tools, checks, progress,
//! logs and results here as on a node's endpoint.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fovea_client::{Client, ClientError, Headers, Notice};
use fovea_core::tool::answers::RESOURCE_UPDATED_PREFIX;
use fovea_core::tool::{Catalog, Descriptor, Kind};
use fovea_core::ErrorCode;
use fovea_node::mcp::{find_in, CallOutcome, CatalogSource, EntryPage, Found, Lookup, McpServer};
use rmcp::model::Extensions;
use rmcp::{ErrorData as McpError, ServiceExt};
use tokio::sync::{mpsc, watch};

use crate::cli::McpArgs;
use crate::client_cmds::connect;

pub async fn run(args: McpArgs) -> anyhow::Result<()> {
    let client = connect(&args.client, "fovea-mcp").await?;
    tracing::info!(url = %client.url(), "serving MCP on stdio");
    let source =
        Arc::new(ClientCatalog { client: client.clone(), timeout: args.timeout, realm: args.client.realm.clone() });
    let running = McpServer::new(source)
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| anyhow::anyhow!("the MCP client did not complete the handshake: {e}"))?;
    let _ = running.waiting().await;
    client.close().await;
    Ok(())
}

/// The catalog of the client's realm, called through the client.
struct ClientCatalog {
    client: Client,
    timeout: Duration,
    realm: String,
}

fn unavailable(e: &ClientError) -> McpError {
    McpError::internal_error(format!("the fovea node is not reachable: {e}"), None)
}

impl ClientCatalog {
    /// The realm's catalog as the node lists it now (the SDK follows its pages).
    async fn fetch(&self) -> Result<Catalog, McpError> {
        let entries = self.client.catalog().await.map_err(|e| unavailable(&e))?;
        let mut catalog = Catalog::default();
        for e in entries {
            if let Ok(d) = Descriptor::parse(&serde_json::to_vec(&e.descriptor).unwrap_or_default()) {
                catalog.insert(&e.procedure, 0, d);
            }
        }
        Ok(catalog)
    }
}

impl CatalogSource for ClientCatalog {
    /// All at once: the SDK follows the node's pages itself.
    async fn page(&self, _extensions: &Extensions, kind: Kind, _cursor: &str) -> Result<EntryPage, McpError> {
        let catalog = self.fetch().await?;
        let (page, _) = catalog.page("", usize::MAX, usize::MAX, |_, d| d.kind() == kind);
        Ok((page.into_iter().map(|(p, d)| (p.to_owned(), d.clone())).collect(), None))
    }

    async fn find(&self, _extensions: &Extensions, lookup: Lookup<'_>) -> Result<Option<Found>, McpError> {
        Ok(find_in(&self.fetch().await?, lookup, |_| true))
    }

    async fn call(
        &self,
        _extensions: &Extensions,
        procedure: &str,
        headers: Headers,
        payload: Bytes,
        notices: mpsc::Sender<Notice>,
        replies: mpsc::Receiver<Notice>,
    ) -> CallOutcome {
        // The provider's questions reach the agent on stdio (through `notices`), and its
        // answers go back (from `replies`).
        let outcome = self.client.call_answering(procedure, &headers, payload, self.timeout, notices, replies).await;
        match outcome {
            Ok(r) => CallOutcome { code: ErrorCode::NoError, headers: r.headers, payload: r.payload },
            Err(ClientError::NoProvider(m)) => CallOutcome::failed(ErrorCode::NoProvider, m),
            Err(e @ ClientError::Timeout(_)) => CallOutcome::failed(ErrorCode::Timeout, e.to_string()),
            Err(ClientError::ProviderDisconnected) => CallOutcome::failed(ErrorCode::ProviderDisconnected, ""),
            Err(ClientError::Busy(m)) => CallOutcome::failed(ErrorCode::Busy, m),
            Err(ClientError::Remote { code, message }) => CallOutcome::failed(ErrorCode::from_u64(code), message),
            Err(e) => CallOutcome::failed(ErrorCode::InternalError, e.to_string()),
        }
    }

    async fn watch(&self, _extensions: &Extensions) -> Option<watch::Receiver<u64>> {
        self.client.watch_tools().await.ok()
    }

    async fn updates(&self, _extensions: &Extensions, procedure: &str) -> Option<mpsc::Receiver<String>> {
        let mut sub = self.client.subscribe(&format!("{RESOURCE_UPDATED_PREFIX}{procedure}")).await.ok()?;
        let (tx, rx) = mpsc::channel(16);
        // Ends when the server drops the receiver (unsubscribed, or the session ended);
        // dropping the subscription unsubscribes at the node.
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    m = sub.next() => {
                        let Some(m) = m else { return };
                        let Ok(uri) = String::from_utf8(m.payload.to_vec()) else { continue };
                        let _ = tx.try_send(uri);
                    }
                    () = tx.closed() => return,
                }
            }
        });
        Some(rx)
    }

    fn realm(&self, _extensions: &Extensions) -> String {
        self.realm.clone()
    }
}
