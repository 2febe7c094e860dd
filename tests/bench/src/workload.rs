//! Workload generation: shared-prefix groups, multi-turn conversations, GIE prefix benchmarks.
//!
//! A workload is a list of sessions; a session's requests run in order (one request for the
//! single-shot workloads, the turns of one conversation for multi-turn). Everything is derived
//! from the seed, so a workload is reproducible and identical for every target.

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::text::{derive_seed, synthetic_text};

/// The workload families.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum WorkloadKind {
    /// SGLang `generated-shared-prefix`: groups of prompts sharing a system prompt.
    SharedPrefix,
    /// Conversations whose turns extend the previous turn (with the previous answer).
    MultiTurn,
    /// GIE prefix benchmark, long shared system prompt and short questions.
    GieHighCache,
    /// GIE prefix benchmark, short shared system prompt and long questions.
    GieLowCache,
}

/// The size parameters of a workload.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Shape {
    /// Number of distinct system prompts.
    pub groups: usize,
    /// Prompts per group (multi-turn: conversations per group).
    pub prompts_per_group: usize,
    /// Tokens of each group's system prompt.
    pub system_tokens: usize,
    /// Tokens of each question (each user turn in multi-turn).
    pub question_tokens: usize,
    /// Tokens generated per request (`max_tokens`, with `ignore_eos`).
    pub output_tokens: usize,
    /// Turns per conversation (multi-turn only; 1 otherwise).
    pub turns: usize,
    /// Zipf exponent of group popularity; `None` gives every group the same number of prompts.
    pub zipf: Option<f64>,
}

/// Optional overrides of a workload's default shape, as given on the command line.
#[derive(Clone, Debug, Default)]
pub struct ShapeOverrides {
    /// See [`Shape::groups`].
    pub groups: Option<usize>,
    /// See [`Shape::prompts_per_group`].
    pub prompts_per_group: Option<usize>,
    /// See [`Shape::system_tokens`].
    pub system_tokens: Option<usize>,
    /// See [`Shape::question_tokens`].
    pub question_tokens: Option<usize>,
    /// See [`Shape::output_tokens`].
    pub output_tokens: Option<usize>,
    /// See [`Shape::turns`].
    pub turns: Option<usize>,
    /// See [`Shape::zipf`].
    pub zipf: Option<f64>,
    /// Multiplies the number of groups (at least one group is kept).
    pub scale: Option<f64>,
}

impl std::fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use clap::ValueEnum;
        match self.to_possible_value() {
            Some(v) => f.write_str(v.get_name()),
            None => write!(f, "{self:?}"),
        }
    }
}

impl WorkloadKind {
    /// The published default shape of this workload.
    pub fn default_shape(self) -> Shape {
        let base = Shape {
            groups: 64,
            prompts_per_group: 16,
            system_tokens: 2048,
            question_tokens: 128,
            output_tokens: 256,
            turns: 1,
            zipf: None,
        };
        match self {
            WorkloadKind::SharedPrefix => base,
            WorkloadKind::MultiTurn => Shape {
                groups: 16,
                prompts_per_group: 4,
                turns: 4,
                ..base
            },
            WorkloadKind::GieHighCache => Shape {
                groups: 256,
                question_tokens: 256,
                ..base
            },
            WorkloadKind::GieLowCache => Shape {
                groups: 256,
                system_tokens: 256,
                question_tokens: 2048,
                ..base
            },
        }
    }

    /// The default shape with `overrides` applied.
    pub fn shape(self, overrides: &ShapeOverrides) -> Shape {
        let mut s = self.default_shape();
        let o = overrides;
        s.groups = o.groups.unwrap_or(s.groups);
        s.prompts_per_group = o.prompts_per_group.unwrap_or(s.prompts_per_group);
        s.system_tokens = o.system_tokens.unwrap_or(s.system_tokens);
        s.question_tokens = o.question_tokens.unwrap_or(s.question_tokens);
        s.output_tokens = o.output_tokens.unwrap_or(s.output_tokens);
        if self == WorkloadKind::MultiTurn {
            s.turns = o.turns.unwrap_or(s.turns);
        }
        s.zipf = o.zipf.or(s.zipf);
        if let Some(scale) = o.scale.filter(|f| f.is_finite() && *f > 0.0) {
            s.groups = ((s.groups as f64) * scale).round() as usize;
        }
        s.groups = s.groups.max(1);
        s.prompts_per_group = s.prompts_per_group.max(1);
        s.turns = s.turns.max(1);
        s.output_tokens = s.output_tokens.max(1);
        s
    }
}

/// Role of a chat message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The shared system prompt.
    System,
    /// A user question.
    User,
    /// A previous answer (multi-turn).
    Assistant,
}

/// One chat message.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Message {
    /// Who speaks.
    pub role: Role,
    /// The text.
    pub content: String,
}

/// One request of the workload.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// Position in the canonical order (0-based, unique).
    pub id: usize,
    /// Index of the group whose system prompt it starts with.
    pub group: usize,
    /// Turn within its conversation (0 for single-shot workloads).
    pub turn: usize,
    /// The messages of a chat request; completions send [`Request::prompt`].
    pub messages: Vec<Message>,
    /// `max_tokens` of the request.
    pub max_tokens: usize,
}

/// Separator between messages when rendered as one prompt (system + "\n\n" + question).
pub const MESSAGE_SEPARATOR: &str = "\n\n";

impl Request {
    /// The prompt as one text: message contents joined by [`MESSAGE_SEPARATOR`].
    pub fn prompt(&self) -> String {
        let parts: Vec<&str> = self.messages.iter().map(|m| m.content.as_str()).collect();
        parts.join(MESSAGE_SEPARATOR)
    }
}

/// Requests that must run one after another (a conversation, or a single request).
#[derive(Clone, Debug, PartialEq)]
pub struct Session {
    /// The requests, in the order they are sent.
    pub requests: Vec<Request>,
}

/// A generated workload.
#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    /// Which family.
    pub kind: WorkloadKind,
    /// Its shape.
    pub shape: Shape,
    /// Sessions in send order (groups / conversations interleaved by a seeded shuffle).
    pub sessions: Vec<Session>,
}

impl Workload {
    /// Generates the workload `kind` with `shape` from `seed`.
    pub fn generate(kind: WorkloadKind, shape: Shape, seed: u64, chars_per_token: usize) -> Self {
        let systems: Vec<String> = (0..shape.groups)
            .map(|g| {
                synthetic_text(
                    derive_seed(seed, "system", g as u64),
                    shape.system_tokens,
                    chars_per_token,
                )
            })
            .collect();
        let group_of = group_assignment(&shape, seed);
        let question = |conv: usize, turn: usize| {
            let idx = (conv as u64) << 16 | turn as u64;
            synthetic_text(
                derive_seed(seed, "question", idx),
                shape.question_tokens,
                chars_per_token,
            )
        };
        let answer = |conv: usize, turn: usize| {
            let idx = (conv as u64) << 16 | turn as u64;
            synthetic_text(
                derive_seed(seed, "answer", idx),
                shape.output_tokens,
                chars_per_token,
            )
        };
        let mut sessions: Vec<Session> = group_of
            .iter()
            .enumerate()
            .map(|(conv, &group)| {
                let mut messages = vec![Message {
                    role: Role::System,
                    content: systems[group].clone(),
                }];
                let requests = (0..shape.turns)
                    .map(|turn| {
                        if turn > 0 {
                            messages.push(Message {
                                role: Role::Assistant,
                                content: answer(conv, turn - 1),
                            });
                        }
                        messages.push(Message {
                            role: Role::User,
                            content: question(conv, turn),
                        });
                        Request {
                            id: 0,
                            group,
                            turn,
                            messages: messages.clone(),
                            max_tokens: shape.output_tokens,
                        }
                    })
                    .collect();
                Session { requests }
            })
            .collect();
        let mut rng = SmallRng::seed_from_u64(derive_seed(seed, "order", 0));
        sessions.shuffle(&mut rng);
        let mut workload = Workload {
            kind,
            shape,
            sessions,
        };
        for (next, (s, r)) in workload.canonical_order().into_iter().enumerate() {
            workload.sessions[s].requests[r].id = next;
        }
        workload
    }

    /// Number of requests.
    pub fn len(&self) -> usize {
        self.sessions.iter().map(|s| s.requests.len()).sum()
    }

    /// True when the workload has no request.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (session, index) pairs in the canonical send order: sessions interleaved turn by turn.
    pub fn canonical_order(&self) -> Vec<(usize, usize)> {
        let max_turns = self
            .sessions
            .iter()
            .map(|s| s.requests.len())
            .max()
            .unwrap_or(0);
        let mut order = Vec::with_capacity(self.len());
        for turn in 0..max_turns {
            for (s, session) in self.sessions.iter().enumerate() {
                if turn < session.requests.len() {
                    order.push((s, turn));
                }
            }
        }
        order
    }

    /// Requests in the canonical send order.
    pub fn requests_in_order(&self) -> Vec<&Request> {
        self.canonical_order()
            .into_iter()
            .map(|(s, r)| &self.sessions[s].requests[r])
            .collect()
    }

    /// Cuts the sessions into consecutive chunks of at most `size` sessions (at least one).
    pub fn chunks(&self, size: usize) -> Vec<std::ops::Range<usize>> {
        let size = size.max(1);
        (0..self.sessions.len())
            .step_by(size)
            .map(|start| start..(start + size).min(self.sessions.len()))
            .collect()
    }
}

/// The group of each session: `prompts_per_group` each, or drawn from Zipf weights.
fn group_assignment(shape: &Shape, seed: u64) -> Vec<usize> {
    let total = shape.groups * shape.prompts_per_group;
    match shape.zipf.filter(|s| s.is_finite() && *s > 0.0) {
        None => (0..shape.groups)
            .flat_map(|g| std::iter::repeat_n(g, shape.prompts_per_group))
            .collect(),
        Some(s) => {
            let weights: Vec<f64> = (1..=shape.groups).map(|k| (k as f64).powf(-s)).collect();
            let sum: f64 = weights.iter().sum();
            let mut cumulative = Vec::with_capacity(weights.len());
            let mut acc = 0.0;
            for w in &weights {
                acc += w / sum;
                cumulative.push(acc);
            }
            let mut rng = SmallRng::seed_from_u64(derive_seed(seed, "zipf", 0));
            (0..total)
                .map(|_| {
                    let u: f64 = rng.random();
                    cumulative
                        .iter()
                        .position(|&c| u < c)
                        .unwrap_or(shape.groups - 1)
                })
                .collect()
        }
    }
}
