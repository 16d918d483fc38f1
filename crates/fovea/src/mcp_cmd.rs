//! `fovea mcp`: an MCP server on stdin/stdout for desktop agents (Claude Desktop, Claude
//! Code, Cursor start MCP servers this way). It is a client of a node: the tools are the
//! realm's tools as `TOOLS` lists them, a `tools/call` is a mesh call made through the SDK,
//! and the provider's progress and logs, cancellation and catalog changes pass through.
//!
//! The mapping between procedures and tools, argument checks and result conversion are
//! `fovea_core::tool`'s, so an agent sees the same tools here as on a node's HTTP endpoint.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use fovea_client::{Client, ClientError, Headers, Notice, ToolInfo};
use fovea_core::tool::{self, ToolDescriptor};
use fovea_core::ErrorCode;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ClientCapabilities, ContentBlock, ListToolsResult,
    PaginatedRequestParams, ProgressNotificationParam, ServerConfig, Tool,
};
use rmcp::service::{NotificationContext, RequestContext};
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler, ServiceExt};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::cli::McpArgs;
use crate::client_cmds::connect;

pub async fn run(args: McpArgs) -> anyhow::Result<()> {
    let client = connect(&args.client, "fovea-mcp").await?;
    tracing::info!(url = %client.url(), "serving MCP on stdio");
    let server = Stdio { client: client.clone(), timeout: args.timeout, log_level: Arc::default() };
    let running = server
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| anyhow::anyhow!("the MCP client did not complete the handshake: {e}"))?;
    let _ = running.waiting().await;
    client.close().await;
    Ok(())
}

#[derive(Clone)]
struct Stdio {
    client: Client,
    timeout: Duration,
    /// The level `logging/setLevel` chose (`None`: every level).
    #[allow(deprecated)]
    log_level: Arc<Mutex<Option<rmcp::model::LoggingLevel>>>,
}

fn unavailable(e: &ClientError) -> McpError {
    McpError::internal_error(format!("the fovea node is not reachable: {e}"), None)
}

fn descriptor(t: &ToolInfo) -> Option<ToolDescriptor> {
    ToolDescriptor::parse(&serde_json::to_vec(&t.descriptor).ok()?).ok()
}

impl ServerHandler for Stdio {
    fn get_info(&self) -> ServerConfig {
        fovea_node::mcp::server_config()
    }

    #[allow(deprecated)]
    async fn set_level(
        &self,
        request: rmcp::model::SetLevelRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        *self.log_level.lock().unwrap_or_else(PoisonError::into_inner) = Some(request.level);
        Ok(())
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        let client = self.client.clone();
        tokio::spawn(async move {
            let Ok(mut watch) = client.watch_tools().await else { return };
            while watch.changed().await.is_ok() {
                if context.peer.notify_tool_list_changed().await.is_err() {
                    return;
                }
            }
        });
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let tools = self.client.tools().await.map_err(|e| unavailable(&e))?;
        let tools: Vec<Tool> = tools
            .iter()
            .filter_map(|t| {
                let d = descriptor(t)?;
                serde_json::from_value(Value::Object(tool::tool_json(&t.procedure, &d))).ok()
            })
            .collect();
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let tools = self.client.tools().await.map_err(|e| unavailable(&e))?;
        let found =
            tools.iter().find(|t| t.name == request.name).and_then(|t| Some((t.procedure.clone(), descriptor(t)?)));
        let Some((procedure, d)) = found else {
            return Err(McpError::invalid_params(format!("unknown tool {:?}", request.name), None));
        };
        let declared =
            serde_json::to_value(context.peer.peer_info().map(|i| i.capabilities.clone()).unwrap_or_default())
                .unwrap_or_default();
        if let Some(missing) = tool::missing_capabilities(&d, &declared) {
            let caps: ClientCapabilities = serde_json::from_value(Value::Object(missing)).unwrap_or_default();
            return Err(McpError::missing_required_client_capability(caps));
        }
        let arguments = Value::Object(request.arguments.clone().unwrap_or_default());
        if let Some(schema) = d.json().get("inputSchema") {
            tool::check_arguments(schema, &arguments, "arguments").map_err(|e| McpError::invalid_params(e, None))?;
        }
        let payload = serde_json::to_vec(&arguments).unwrap_or_default();
        let (tx, mut rx) = mpsc::channel(64);
        let no_headers = Headers::new();
        let call = self.client.call_with_notices(&procedure, &no_headers, payload, self.timeout, tx);
        tokio::pin!(call);
        let progress_token = context.meta.get_progress_token();
        #[allow(deprecated)]
        let min_level = *self.log_level.lock().unwrap_or_else(PoisonError::into_inner);
        let realm = self.client.server_info().map(|i| i.node).unwrap_or_default();
        let outcome = loop {
            tokio::select! {
                r = &mut call => break r,
                Some(notice) = rx.recv() => pass_on(&context, &progress_token, min_level.as_ref(), notice).await,
                // Dropping the call future cancels it at the node and the provider.
                () = context.ct.cancelled() => return Ok(CallToolResult::error(vec![ContentBlock::text("cancelled")]).into()),
            }
        };
        // Notices that arrived with the result still go first.
        while let Ok(notice) = rx.try_recv() {
            pass_on(&context, &progress_token, min_level.as_ref(), notice).await;
        }
        let (code, headers, payload) = match outcome {
            Ok(r) => (ErrorCode::NoError, r.headers, r.payload.to_vec()),
            Err(ClientError::NoProvider(_)) => (ErrorCode::NoProvider, Headers::new(), Vec::new()),
            Err(ClientError::Timeout(_)) => (ErrorCode::Timeout, Headers::new(), Vec::new()),
            Err(ClientError::ProviderDisconnected) => (ErrorCode::ProviderDisconnected, Headers::new(), Vec::new()),
            Err(ClientError::Busy(m)) => (ErrorCode::Busy, Headers::new(), m.into_bytes()),
            Err(ClientError::Remote { code, message }) => {
                (ErrorCode::from_u64(code), Headers::new(), message.into_bytes())
            }
            Err(e) => (ErrorCode::InternalError, Headers::new(), e.to_string().into_bytes()),
        };
        // The node's endpoint converts with the same function, so both front ends answer
        // alike in both eras (2026-07-28 results carry `resultType`).
        Ok(fovea_node::mcp::tool_result(code, &headers, &payload, &procedure, &realm).into())
    }
}

/// Passes one provider notice on to the agent, following the session's logging level.
#[allow(deprecated)]
async fn pass_on(
    context: &RequestContext<RoleServer>,
    progress_token: &Option<rmcp::model::ProgressToken>,
    min_level: Option<&rmcp::model::LoggingLevel>,
    notice: Notice,
) {
    match notice {
        Notice::Progress { progress, total, message } => {
            let Some(token) = progress_token else { return };
            let mut p = ProgressNotificationParam::new(token.clone(), progress);
            p.total = total;
            p.message = message;
            let _ = context.peer.notify_progress(p).await;
        }
        Notice::Log { level, logger, data } => {
            let Ok(parsed) = serde_json::from_value::<rmcp::model::LoggingLevel>(Value::String(level)) else { return };
            if min_level.is_some_and(|m| fovea_node::mcp::rank(&parsed) < fovea_node::mcp::rank(m)) {
                return;
            }
            let mut m = rmcp::model::LoggingMessageNotificationParam::new(parsed, data);
            m.logger = logger;
            let _ = context.peer.notify_logging_message(m).await;
        }
        _ => {}
    }
}
