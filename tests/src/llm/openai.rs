//! A scripted OpenAI Responses API (`POST /v1/responses`, SSE) for the real Codex CLI.
//!
//! The main conversation (a request offering tools, in `tools` or in an `additional_tools`
//! input item) follows [`CodexScript::steps`], keyed on
//! how many tool outputs (`function_call_output` / `custom_tool_call_output` input items)
//! the client has sent back: each step is a tool call or the final message. Other requests
//! get a short text answer. The stream follows the documented event sequence:
//! `response.created`, `response.in_progress`, per output item `response.output_item.added`,
//! its deltas (`response.function_call_arguments.delta` / `response.custom_tool_call_input.delta`,
//! or for text `response.content_part.added`, `response.output_text.delta`,
//! `response.output_text.done`, `response.content_part.done`), `response.output_item.done`,
//! then `response.completed` with the usage. Non-streaming requests get the final response
//! object as JSON.
//!
//! The pinned Codex first tries the Responses WebSocket (`GET /v1/responses` with
//! `Upgrade: websocket`); this server answers 404, and Codex falls back to HTTPS + SSE after
//! a few attempts. Those upgrade requests are recorded too.

use super::{split_text, sse_event, Recorded, Reply, Script, Usage};
use serde_json::{json, Value};

/// The model every answer names (priced in netstack/prices.toml as `gpt-5-codex`).
pub const MODEL: &str = "gpt-5-codex";

/// One model turn.
#[derive(Debug, Clone)]
pub enum Step {
    /// A `function_call` item; `arguments` is the JSON text.
    Function { name: String, arguments: String },
    /// A `custom_tool_call` item (freeform input, e.g. Codex's `apply_patch` grammar tool).
    Custom { name: String, input: String },
    /// The final assistant message.
    Text(String),
}

#[derive(Debug, Default)]
pub struct CodexScript {
    pub steps: Vec<Step>,
    /// Accept the Responses WebSocket (Codex's preferred transport) instead of refusing it.
    pub websocket: bool,
    /// Response id → (tool outputs seen so far, main conversation): requests that continue a
    /// response (`previous_response_id`, the WebSocket's incremental input) add to it.
    chain: std::sync::Mutex<std::collections::HashMap<String, (usize, bool)>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl CodexScript {
    /// Codex's code-mode tool `exec` (a freeform custom tool running JavaScript that calls
    /// the nested tools) applies a patch with `tools.apply_patch` that adds `new_file` with
    /// `new_contents`, then one that changes the line `old` of `existing` into `new`; then
    /// the final message. Paths are relative to the working directory. (The pinned Codex
    /// offers only `exec` and a few other tools at the top level, in an `additional_tools`
    /// input item; `apply_patch` and `exec_command` are nested tools reached from `exec`.)
    pub fn write_then_edit(
        new_file: &str,
        new_contents: &str,
        existing: &str,
        old: &str,
        new: &str,
    ) -> CodexScript {
        let added: String = new_contents.lines().map(|l| format!("+{l}\n")).collect();
        let patch = |p: String| Step::Custom {
            name: "exec".into(),
            input: format!(
                "const r = await tools.apply_patch({});\ntext(r);\n",
                serde_json::to_string(&p).unwrap()
            ),
        };
        CodexScript {
            websocket: false,
            chain: Default::default(),
            next_id: Default::default(),
            steps: vec![
                patch(format!(
                    "*** Begin Patch\n*** Add File: {new_file}\n{added}*** End Patch\n"
                )),
                patch(format!(
                    "*** Begin Patch\n*** Update File: {existing}\n@@\n-{old}\n+{new}\n*** End Patch\n"
                )),
                Step::Text(format!("Created {new_file} and updated {existing}.")),
            ],
        }
    }

    /// Inserts an `exec` call before the final message that runs shell `command` in the
    /// guest through the nested `exec_command` tool and returns its output: the output goes
    /// back to the server in the next request, so a test sees what the guest saw.
    pub fn with_probe(mut self, command: &str) -> CodexScript {
        let last = self.steps.len() - 1;
        self.steps.insert(
            last,
            Step::Custom {
                name: "exec".into(),
                input: format!(
                    "const r = await tools.exec_command({{cmd: {}, login: false}});\n\
                     text(typeof r === \"string\" ? r : (r.output ?? JSON.stringify(r)));\n",
                    serde_json::to_string(command).unwrap()
                ),
            },
        );
        self
    }

    /// The text of the tool output for step `step`'s call in request body `req`, if present
    /// (strings and `text` fields of the output, joined by newlines).
    pub fn tool_output(req: &Value, step: usize) -> Option<String> {
        fn texts(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::String(s) => out.push(s.clone()),
                Value::Array(a) => a.iter().for_each(|x| texts(x, out)),
                Value::Object(o) => {
                    if let Some(Value::String(t)) = o.get("text") {
                        out.push(t.clone());
                    } else if let Some(x) = o.get("output") {
                        texts(x, out);
                    }
                }
                _ => {}
            }
        }
        let id = format!("call_ax{step:02}");
        let item = req["input"].as_array()?.iter().find(|i| {
            i["call_id"] == id.as_str()
                && i["type"]
                    .as_str()
                    .is_some_and(|t| t.ends_with("_call_output"))
        })?;
        let mut out = Vec::new();
        texts(&item["output"], &mut out);
        Some(out.join("\n"))
    }

    /// The usage the answer to step `i` reports (`input` includes `cache_read`, as OpenAI
    /// counts it).
    pub fn usage(i: usize) -> Usage {
        let i = i as u64;
        Usage {
            input: 3000 + 200 * i,
            output: 60 + 9 * i,
            cache_read: if i == 0 { 0 } else { 1024 * i },
            cache_write: 0,
        }
    }

    pub const SIDE_USAGE: Usage = Usage {
        input: 33,
        output: 7,
        cache_read: 0,
        cache_write: 0,
    };
}

/// How many tool outputs the request's `input` carries.
pub fn tool_outputs(body: &Value) -> usize {
    body["input"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter(|i| {
                    i["type"]
                        .as_str()
                        .is_some_and(|t| t.ends_with("_call_output"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// The names of the tools a request offers: its `tools` and those of `additional_tools`
/// input items, namespaces flattened (a tool's own `name`, without the namespace).
pub fn tool_names(body: &Value) -> Vec<String> {
    fn walk(tools: &Value, out: &mut Vec<String>) {
        for t in tools.as_array().into_iter().flatten() {
            if t["type"] == "namespace" {
                walk(&t["tools"], out);
            } else if let Some(n) = t["name"].as_str() {
                out.push(n.to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(&body["tools"], &mut out);
    for item in body["input"].as_array().into_iter().flatten() {
        if item["type"] == "additional_tools" {
            walk(&item["tools"], &mut out);
        }
    }
    out
}

impl Script for CodexScript {
    fn websocket(&self) -> bool {
        self.websocket
    }

    fn reply(&self, req: &Recorded) -> Reply {
        let body = req.json();
        let path = req.path();
        if !(req.method == "POST" || req.method == "WS") || !path.ends_with("/responses") {
            return Reply::json(
                404,
                &json!({"error": {"type": "invalid_request_error", "message": format!("{} {path}: not scripted", req.method)}}),
            );
        }
        let prev = body["previous_response_id"]
            .as_str()
            .and_then(|p| self.chain.lock().unwrap().get(p).copied());
        let (base, prev_main) = prev.unwrap_or((0, false));
        let main = prev_main || !tool_names(&body).is_empty();
        let seen = base + tool_outputs(&body);
        let id = format!(
            "resp_ax{:04}",
            self.next_id
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        self.chain.lock().unwrap().insert(id.clone(), (seen, main));
        let (item, usage, step) = if main {
            let n = seen.min(self.steps.len() - 1);
            let item = match &self.steps[n] {
                Step::Function { name, arguments } => json!({
                    "type": "function_call", "id": format!("fc_ax{n:02}"), "status": "completed",
                    "call_id": format!("call_ax{n:02}"), "name": name, "arguments": arguments,
                }),
                Step::Custom { name, input } => json!({
                    "type": "custom_tool_call", "id": format!("ctc_ax{n:02}"), "status": "completed",
                    "call_id": format!("call_ax{n:02}"), "name": name, "input": input,
                }),
                Step::Text(t) => message(&format!("msg_ax{n:02}"), t),
            };
            (item, Self::usage(n), Some(n))
        } else {
            (
                message("msg_side", "Scripted side answer"),
                Self::SIDE_USAGE,
                None,
            )
        };
        let completed = response(&id, "completed", std::slice::from_ref(&item), Some(usage));
        let mut reply = if body["stream"].as_bool().unwrap_or(false) {
            sse(&id, &item, &completed)
        } else {
            Reply::json(200, &completed)
        };
        reply.usage = Some(usage);
        reply.model = Some(MODEL.into());
        reply.step = step;
        reply
    }
}

fn message(id: &str, text: &str) -> Value {
    json!({
        "type": "message", "id": id, "status": "completed", "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    })
}

fn response(id: &str, status: &str, output: &[Value], usage: Option<Usage>) -> Value {
    json!({
        "id": id, "object": "response", "created_at": 1_763_700_000u64, "status": status,
        "model": MODEL, "output": output, "parallel_tool_calls": false,
        "usage": usage.map(|u| json!({
            "input_tokens": u.input,
            "input_tokens_details": {"cached_tokens": u.cache_read},
            "output_tokens": u.output,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": u.input + u.output,
        })),
    })
}

fn sse(id: &str, item: &Value, completed: &Value) -> Reply {
    let mut seq = 0u64;
    let mut ev = Vec::new();
    let mut push = |name: &str, mut data: Value| {
        data["type"] = json!(name);
        data["sequence_number"] = json!(seq);
        seq += 1;
        ev.push(sse_event(name, &data));
    };
    let pending = response(id, "in_progress", &[], None);
    push("response.created", json!({"response": pending}));
    push("response.in_progress", json!({"response": pending}));
    let item_id = item["id"].clone();
    let mut added = item.clone();
    added["status"] = json!("in_progress");
    match item["type"].as_str() {
        Some("function_call") => {
            added["arguments"] = json!("");
            push(
                "response.output_item.added",
                json!({"output_index": 0, "item": added}),
            );
            let args = item["arguments"].as_str().unwrap_or("");
            for d in split_text(args, 3) {
                push(
                    "response.function_call_arguments.delta",
                    json!({"item_id": item_id, "output_index": 0, "delta": d}),
                );
            }
            push(
                "response.function_call_arguments.done",
                json!({"item_id": item_id, "output_index": 0, "arguments": args}),
            );
        }
        Some("custom_tool_call") => {
            added["input"] = json!("");
            push(
                "response.output_item.added",
                json!({"output_index": 0, "item": added}),
            );
            let input = item["input"].as_str().unwrap_or("");
            for d in split_text(input, 3) {
                push(
                    "response.custom_tool_call_input.delta",
                    json!({"item_id": item_id, "output_index": 0, "delta": d}),
                );
            }
            push(
                "response.custom_tool_call_input.done",
                json!({"item_id": item_id, "output_index": 0, "input": input}),
            );
        }
        _ => {
            added["content"] = json!([]);
            push(
                "response.output_item.added",
                json!({"output_index": 0, "item": added}),
            );
            let text = item["content"][0]["text"].as_str().unwrap_or("");
            push(
                "response.content_part.added",
                json!({"item_id": item_id, "output_index": 0, "content_index": 0,
                       "part": {"type": "output_text", "text": "", "annotations": []}}),
            );
            for d in split_text(text, 2) {
                push(
                    "response.output_text.delta",
                    json!({"item_id": item_id, "output_index": 0, "content_index": 0, "delta": d}),
                );
            }
            push(
                "response.output_text.done",
                json!({"item_id": item_id, "output_index": 0, "content_index": 0, "text": text}),
            );
            push(
                "response.content_part.done",
                json!({"item_id": item_id, "output_index": 0, "content_index": 0,
                       "part": {"type": "output_text", "text": text, "annotations": []}}),
            );
        }
    }
    push(
        "response.output_item.done",
        json!({"output_index": 0, "item": item}),
    );
    push("response.completed", json!({"response": completed}));
    Reply {
        status: 200,
        content_type: "text/event-stream",
        chunks: ev,
        usage: None,
        model: None,
        step: None,
    }
}
