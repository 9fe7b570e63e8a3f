//! A scripted Anthropic Messages API (`POST /v1/messages`, non-streaming JSON and SSE) for
//! the real Claude Code CLI.
//!
//! The main conversation (a request offering the `Write` and `Edit` tools) follows
//! [`ClaudeScript::steps`]: with no tool result sent back yet the model calls `Write` for a new
//! file; after one result it calls `Read` on the existing file (Claude Code refuses to edit a
//! file it has not read); after two, `Edit` of that file; after three it ends the turn with
//! text. Everything else (`count_tokens`, title or quota requests without those tools) gets
//! a short text answer. Streamed answers follow the documented SSE event sequence:
//! `message_start` (usage with the input tokens), per content block `content_block_start`,
//! `content_block_delta` (`text_delta` / `input_json_delta`), `content_block_stop`, then
//! `message_delta` (stop reason, cumulative output tokens) and `message_stop`.

use super::{split_text, sse_event, Recorded, Reply, Script, Usage};
use serde_json::{json, Value};

/// The model every answer names (priced in netstack/prices.toml as `claude-sonnet-4-5`).
pub const MODEL: &str = "claude-sonnet-4-5-20250929";
/// The model named in side answers (priced as `claude-haiku-4-5`).
pub const SIDE_MODEL: &str = "claude-haiku-4-5-20251001";

/// One model turn of the script.
#[derive(Debug, Clone)]
pub enum Step {
    /// Optional lead-in text, then one `tool_use` block.
    Tool {
        text: String,
        name: String,
        input: Value,
    },
    /// The final answer (`end_turn`).
    Text(String),
}

/// The conversation: a new file written, an existing file read and edited, then done.
#[derive(Debug, Clone)]
pub struct ClaudeScript {
    pub steps: Vec<Step>,
}

impl ClaudeScript {
    /// `workdir` is the absolute path of the client's working directory (`/workspace` in the
    /// guest); `new_file` is created with `new_contents`; in `existing`, `old` becomes `new`.
    pub fn write_then_edit(
        workdir: &str,
        new_file: &str,
        new_contents: &str,
        existing: &str,
        old: &str,
        new: &str,
    ) -> ClaudeScript {
        let p = |f: &str| format!("{}/{f}", workdir.trim_end_matches('/'));
        ClaudeScript {
            steps: vec![
                Step::Tool {
                    text: format!("I'll create {new_file}."),
                    name: "Write".into(),
                    input: json!({"file_path": p(new_file), "content": new_contents}),
                },
                Step::Tool {
                    text: format!("Now I'll look at {existing}."),
                    name: "Read".into(),
                    input: json!({"file_path": p(existing)}),
                },
                Step::Tool {
                    text: String::new(),
                    name: "Edit".into(),
                    input: json!({"file_path": p(existing), "old_string": old, "new_string": new}),
                },
                Step::Text(format!("Created {new_file} and updated {existing}.")),
            ],
        }
    }

    /// Inserts a `Bash` tool call running `command` before the final answer: its output goes
    /// back to the server in the next request's `tool_result`, so a test sees what the
    /// guest saw (e.g. its environment) the way the provider would.
    pub fn with_probe(mut self, command: &str) -> ClaudeScript {
        let last = self.steps.len() - 1;
        self.steps.insert(
            last,
            Step::Tool {
                text: String::new(),
                name: "Bash".into(),
                input: json!({"command": command, "description": "Inspect the environment"}),
            },
        );
        self
    }

    /// The text of the `tool_result` for step `step`'s call in request `req` (the server's
    /// view of what the tool returned), if present.
    pub fn tool_result(req: &serde_json::Value, step: usize) -> Option<String> {
        let id = format!("toolu_ax{step:02}");
        let b = req["messages"]
            .as_array()?
            .iter()
            .filter_map(|m| m["content"].as_array())
            .flatten()
            .find(|b| b["type"] == "tool_result" && b["tool_use_id"] == id.as_str())?;
        Some(match &b["content"] {
            Value::String(s) => s.clone(),
            Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join("\n"),
            _ => String::new(),
        })
    }

    /// The usage the answer to step `i` reports: distinct per step, with cache writes on
    /// the first turn and cache reads afterwards (as a real prompt cache would).
    pub fn usage(i: usize) -> Usage {
        let i = i as u64;
        Usage {
            input: 1200 + 100 * i,
            output: 40 + 7 * i,
            cache_read: if i == 0 { 0 } else { 2000 + 10 * i },
            cache_write: if i == 0 { 2000 } else { 30 },
        }
    }

    /// The usage of a side answer.
    pub const SIDE_USAGE: Usage = Usage {
        input: 21,
        output: 5,
        cache_read: 0,
        cache_write: 0,
    };
}

/// How many `tool_result` blocks the conversation has sent back so far.
pub fn tool_results(body: &Value) -> usize {
    body["messages"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .filter(|m| m["role"] == "user")
                .filter_map(|m| m["content"].as_array())
                .flatten()
                .filter(|b| b["type"] == "tool_result")
                .count()
        })
        .unwrap_or(0)
}

/// Whether the request is the main (tool-using) conversation.
pub fn is_main(body: &Value) -> bool {
    let names: Vec<&str> = body["tools"]
        .as_array()
        .map(|t| t.iter().filter_map(|t| t["name"].as_str()).collect())
        .unwrap_or_default();
    names.contains(&"Write") && names.contains(&"Edit")
}

impl Script for ClaudeScript {
    fn reply(&self, req: &Recorded) -> Reply {
        let body = req.json();
        let path = req.path();
        if req.method != "POST" || !path.starts_with("/v1/messages") {
            return Reply::json(
                404,
                &json!({"type": "error", "error": {"type": "not_found_error", "message": format!("{} {path}: not scripted", req.method)}}),
            );
        }
        if path == "/v1/messages/count_tokens" {
            return Reply::json(200, &json!({"input_tokens": 1234}));
        }
        let stream = body["stream"].as_bool().unwrap_or(false);
        let (blocks, stop, usage, model, step) = if is_main(&body) {
            let n = tool_results(&body).min(self.steps.len() - 1);
            let usage = Self::usage(n);
            match &self.steps[n] {
                Step::Tool { text, name, input } => {
                    let mut b = Vec::new();
                    if !text.is_empty() {
                        b.push(json!({"type": "text", "text": text}));
                    }
                    b.push(json!({"type": "tool_use", "id": format!("toolu_ax{n:02}"), "name": name, "input": input}));
                    (b, "tool_use", usage, MODEL, Some(n))
                }
                Step::Text(t) => (
                    vec![json!({"type": "text", "text": t})],
                    "end_turn",
                    usage,
                    MODEL,
                    Some(n),
                ),
            }
        } else {
            (
                vec![json!({"type": "text", "text": "Scripted side answer"})],
                "end_turn",
                Self::SIDE_USAGE,
                SIDE_MODEL,
                None,
            )
        };
        let id = format!("msg_ax{:04}", req.body.len() % 10000);
        let mut reply = if stream {
            sse(&id, model, &blocks, stop, usage)
        } else {
            Reply::json(
                200,
                &json!({
                    "id": id, "type": "message", "role": "assistant", "model": model,
                    "content": blocks, "stop_reason": stop, "stop_sequence": null,
                    "usage": usage_json(usage, usage.output),
                }),
            )
        };
        reply.usage = Some(usage);
        reply.model = Some(model.to_string());
        reply.step = step;
        reply
    }
}

fn usage_json(u: Usage, output: u64) -> Value {
    json!({
        "input_tokens": u.input,
        "cache_creation_input_tokens": u.cache_write,
        "cache_read_input_tokens": u.cache_read,
        "output_tokens": output,
    })
}

/// The SSE stream of one message.
fn sse(id: &str, model: &str, blocks: &[Value], stop: &str, usage: Usage) -> Reply {
    let mut ev = vec![sse_event(
        "message_start",
        &json!({"type": "message_start", "message": {
            "id": id, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": null, "stop_sequence": null, "usage": usage_json(usage, 1),
        }}),
    )];
    ev.push(sse_event("ping", &json!({"type": "ping"})));
    for (i, b) in blocks.iter().enumerate() {
        let (start, deltas): (Value, Vec<Value>) = match b["type"].as_str() {
            Some("tool_use") => {
                let input = serde_json::to_string(&b["input"]).unwrap();
                (
                    json!({"type": "tool_use", "id": b["id"], "name": b["name"], "input": {}}),
                    split_text(&input, 3)
                        .into_iter()
                        .map(|p| json!({"type": "input_json_delta", "partial_json": p}))
                        .collect(),
                )
            }
            _ => (
                json!({"type": "text", "text": ""}),
                split_text(b["text"].as_str().unwrap_or(""), 2)
                    .into_iter()
                    .map(|t| json!({"type": "text_delta", "text": t}))
                    .collect(),
            ),
        };
        ev.push(sse_event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": i, "content_block": start}),
        ));
        for d in deltas {
            ev.push(sse_event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": i, "delta": d}),
            ));
        }
        ev.push(sse_event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": i}),
        ));
    }
    ev.push(sse_event(
        "message_delta",
        &json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null},
                "usage": {"output_tokens": usage.output}}),
    ));
    ev.push(sse_event("message_stop", &json!({"type": "message_stop"})));
    Reply {
        status: 200,
        content_type: "text/event-stream",
        chunks: ev,
        usage: None,
        model: None,
        step: None,
    }
}
