//! `GET /v1/models`: the models a tenant may use, from its upstreams' aliases and model lists.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::AppState;
use crate::error::ApiError;
use crate::tenants::Tenant;

/// `GET /v1/models`: OpenAI's model list.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[schema(example = json!({"object":"list","data":[{"id":"fast","object":"model","created":0,"owned_by":"openai"}]}))]
pub struct ModelList {
    /// Always `list`.
    pub object: &'static str,
    /// Model objects (`id`, `object`, `created`, `owned_by`): the aliases, then what the
    /// upstreams listed, as they listed it.
    #[schema(value_type = Vec<Object>)]
    pub data: Vec<Value>,
}

#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "chat",
    responses(
        (status = 200, description = "Models this tenant may name: configured aliases first, then what its upstreams list", body = ModelList),
        (status = 401, description = "No or unknown API key", body = crate::server::openapi::ErrorResponse),
        (status = 502, description = "No alias configured and no upstream could list its models", body = crate::server::openapi::ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn list_models(
    State(state): State<AppState>,
    Extension(tenant): Extension<Arc<Tenant>>,
) -> Result<Json<ModelList>, ApiError> {
    let upstreams: Vec<_> = tenant
        .upstreams
        .iter()
        .filter_map(|n| state.upstreams.get(n))
        .collect();
    let mut models: BTreeMap<String, Value> = BTreeMap::new();
    let mut aliases = Vec::new();
    for up in &upstreams {
        for alias in up.config().models.keys() {
            aliases
                .push(json!({"id": alias, "object": "model", "created": 0, "owned_by": up.name()}));
        }
    }
    let listed = futures_util::future::join_all(
        upstreams
            .iter()
            .filter(|u| u.config().list_models)
            .map(|u| async move { (u.name().to_owned(), u.list_models().await) }),
    )
    .await;
    let mut failures = Vec::new();
    for (name, result) in listed {
        match result {
            Ok(list) => {
                for m in list {
                    if let Some(id) = m.get("id").and_then(Value::as_str) {
                        models.entry(id.to_owned()).or_insert(m);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(upstream = %name, error = %e, "could not list upstream models");
                failures.push(format!("{name}: {e}"));
            }
        }
    }
    if aliases.is_empty() && models.is_empty() && !failures.is_empty() {
        return Err(ApiError::bad_gateway(format!(
            "no upstream could list its models ({})",
            failures.join("; ")
        )));
    }
    let alias_ids: Vec<String> = aliases
        .iter()
        .filter_map(|a| a["id"].as_str().map(str::to_owned))
        .collect();
    let mut data = aliases;
    data.extend(
        models
            .into_iter()
            .filter(|(id, _)| !alias_ids.contains(id))
            .map(|(_, m)| m),
    );
    Ok(Json(ModelList {
        object: "list",
        data,
    }))
}
