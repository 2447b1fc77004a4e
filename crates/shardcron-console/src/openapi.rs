//! The OpenAPI 3.1 document served at `/api/openapi.json`, generated from one
//! table of the API's operations ([`OPERATIONS`]), which the tests also use to
//! check that every documented operation is served.

use serde_json::{Map, Value, json};

/// Who may call an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No credentials.
    Public,
    /// Any valid session or token.
    Viewer,
    /// The admin role.
    Admin,
}

/// One operation of the API.
#[derive(Debug, Clone, Copy)]
pub struct Operation {
    /// HTTP method, lower case.
    pub method: &'static str,
    /// Path with `{parameters}`.
    pub path: &'static str,
    /// One line for people.
    pub summary: &'static str,
    /// Who may call it.
    pub access: Access,
    /// Query parameters: (name, description).
    pub query: &'static [(&'static str, &'static str)],
    /// Whether it takes a JSON body.
    pub body: bool,
    /// The success status.
    pub status: u16,
}

const fn op(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    access: Access,
) -> Operation {
    Operation {
        method,
        path,
        summary,
        access,
        query: &[],
        body: false,
        status: 200,
    }
}

const fn with_body(mut o: Operation, status: u16) -> Operation {
    o.body = true;
    o.status = status;
    o
}

const fn status(mut o: Operation, status: u16) -> Operation {
    o.status = status;
    o
}

const fn query(mut o: Operation, q: &'static [(&'static str, &'static str)]) -> Operation {
    o.query = q;
    o
}

use Access::{Admin, Public, Viewer};

/// Every operation of the API.
pub const OPERATIONS: &[Operation] = &[
    with_body(
        op(
            "post",
            "/api/login",
            "Log in; sets the session cookie",
            Public,
        ),
        200,
    ),
    status(
        op(
            "post",
            "/api/logout",
            "Log out (ends the session everywhere; without one, nothing to do)",
            Public,
        ),
        204,
    ),
    op(
        "get",
        "/api/session",
        "The session's user, role and CSRF token",
        Viewer,
    ),
    op("get", "/api/users", "List users", Admin),
    with_body(op("post", "/api/users", "Create a user", Admin), 201),
    with_body(
        op(
            "put",
            "/api/users/{name}/password",
            "Set a user's password",
            Viewer,
        ),
        204,
    ),
    status(
        op("delete", "/api/users/{name}", "Delete a user", Admin),
        204,
    ),
    op("get", "/api/tokens", "List API tokens", Admin),
    with_body(
        op(
            "post",
            "/api/tokens",
            "Create an API token (shown once)",
            Admin,
        ),
        201,
    ),
    status(
        op("delete", "/api/tokens/{id}", "Revoke an API token", Admin),
        204,
    ),
    op("get", "/api/jobs", "List jobs with their status", Viewer),
    with_body(op("post", "/api/jobs", "Create a job", Admin), 201),
    with_body(
        op(
            "post",
            "/api/jobs/validate",
            "Validate a job and preview its next fires",
            Viewer,
        ),
        200,
    ),
    op(
        "get",
        "/api/jobs/{name}",
        "A job with its items and next fires",
        Viewer,
    ),
    with_body(
        op(
            "put",
            "/api/jobs/{name}",
            "Replace a job (optionally at a revision)",
            Admin,
        ),
        200,
    ),
    status(op("delete", "/api/jobs/{name}", "Delete a job", Admin), 204),
    op("post", "/api/jobs/{name}/enable", "Enable a job", Admin),
    op("post", "/api/jobs/{name}/disable", "Disable a job", Admin),
    with_body(
        op(
            "post",
            "/api/jobs/{name}/trigger",
            "Run a job now (all or some items)",
            Admin,
        ),
        202,
    ),
    query(
        op(
            "get",
            "/api/jobs/{name}/next",
            "The next fire times",
            Viewer,
        ),
        &[("count", "how many, 1 to 100 (default 5)")],
    ),
    op(
        "post",
        "/api/jobs/{name}/items/{item}/enable",
        "Enable an item",
        Admin,
    ),
    op(
        "post",
        "/api/jobs/{name}/items/{item}/disable",
        "Disable an item",
        Admin,
    ),
    query(
        op(
            "get",
            "/api/executions",
            "Query executions, newest first",
            Viewer,
        ),
        &[
            ("job", "job name"),
            ("item", "sharding item"),
            ("status", "statuses, comma-separated"),
            ("source", "sources, comma-separated"),
            ("instance", "instance id"),
            ("from", "started at or after (RFC 3339)"),
            ("to", "started before (RFC 3339)"),
            ("limit", "page size, 1 to 1000 (default 50)"),
            ("offset", "rows to skip"),
        ],
    ),
    op(
        "get",
        "/api/executions/{id}",
        "One execution with its transitions and output",
        Viewer,
    ),
    status(
        op(
            "post",
            "/api/executions/{id}/cancel",
            "Cancel a running execution",
            Admin,
        ),
        202,
    ),
    op(
        "get",
        "/api/events",
        "Server-sent events: every new execution status",
        Viewer,
    ),
    op("get", "/api/instances", "Live instances", Viewer),
    op(
        "post",
        "/api/instances/{name}/enable",
        "Enable the instances of a name",
        Admin,
    ),
    op(
        "post",
        "/api/instances/{name}/disable",
        "Disable the instances of a name",
        Admin,
    ),
    status(
        op(
            "post",
            "/api/instances/{id}/shutdown",
            "Ask an instance to stop gracefully",
            Admin,
        ),
        202,
    ),
    op("get", "/api/overview", "Cluster overview", Viewer),
    query(
        op("get", "/api/audit", "The audit log, newest first", Admin),
        &[
            ("limit", "page size"),
            ("offset", "rows to skip"),
            ("actor", "only this actor"),
            ("action", "only this action"),
        ],
    ),
    op("get", "/api/health", "The serving node's health", Public),
    op("get", "/api/openapi.json", "This document", Public),
    op("get", "/metrics", "Prometheus metrics", Viewer),
];

/// The document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for o in OPERATIONS {
        let mut params: Vec<Value> = Vec::new();
        for seg in o.path.split('/') {
            if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                params.push(json!({
                    "name": name, "in": "path", "required": true, "schema": {"type": "string"}
                }));
            }
        }
        for (name, description) in o.query {
            params.push(json!({
                "name": name, "in": "query", "required": false,
                "description": description, "schema": {"type": "string"}
            }));
        }
        let mut responses = Map::new();
        responses.insert(o.status.to_string(), json!({"description": "success"}));
        if o.body || !o.query.is_empty() || o.path.contains('{') {
            responses.insert(
                "400".into(),
                json!({"$ref": "#/components/responses/BadRequest"}),
            );
        }
        if o.path.contains('{') {
            responses.insert(
                "404".into(),
                json!({"$ref": "#/components/responses/NotFound"}),
            );
        }
        let mut operation = json!({
            "summary": o.summary,
            "operationId": format!("{} {}", o.method, o.path),
            "parameters": params,
            "responses": responses,
        });
        match o.access {
            Access::Public => operation["security"] = json!([]),
            Access::Viewer | Access::Admin => {
                responses_auth(&mut operation, o.access);
            }
        }
        if o.body {
            operation["requestBody"] = json!({
                "required": o.path != "/api/jobs/{name}/trigger",
                "content": {"application/json": {"schema": {"type": "object"}}}
            });
        }
        let entry = paths
            .entry(o.path.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        entry[o.method] = operation;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "shardcron",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The REST API of a shardcron namespace. See docs/api.md.",
        },
        "paths": paths,
        "security": [{"bearer": []}, {"session": []}],
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": "shardcron_session",
                    "description": "changes also need the X-CSRF-Token header"},
            },
            "responses": {
                "BadRequest": {"description": "invalid input; `field` names it",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                "NotFound": {"description": "no such object",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                "Unauthorized": {"description": "missing or invalid credentials"},
                "Forbidden": {"description": "the role does not allow it, or the CSRF token is missing"},
            },
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {
                    "error": {"type": "string"},
                    "field": {"type": "string"},
                    "problems": {"type": "array", "items": {"type": "object"}},
                }},
            },
        },
    })
}

fn responses_auth(operation: &mut Value, access: Access) {
    operation["responses"]["401"] = json!({"$ref": "#/components/responses/Unauthorized"});
    if access == Access::Admin {
        operation["responses"]["403"] = json!({"$ref": "#/components/responses/Forbidden"});
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_is_in_the_document_once() {
        let doc = document();
        let mut seen = std::collections::HashSet::new();
        for o in OPERATIONS {
            assert!(
                seen.insert((o.method, o.path)),
                "{} {} twice",
                o.method,
                o.path
            );
            let entry = &doc["paths"][o.path][o.method];
            assert_eq!(entry["summary"], o.summary);
            let params = entry["parameters"].as_array().map_or(0, Vec::len);
            let expected = o.path.matches('{').count() + o.query.len();
            assert_eq!(params, expected, "{} {}", o.method, o.path);
        }
        assert_eq!(doc["openapi"], "3.1.0");
    }
}
