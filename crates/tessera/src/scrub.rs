//! The scrub commands of the CLI: `scrub status` (every node's background scan of its
//! replicas, as its heartbeats report it), `scrub start NODE` and `scrub pause NODE`
//! (carried to the node by the manager). Each makes one typed call of the client library
//! and prints the answer (a table, or JSON with `--output json`: the `NodeScrub`s as the
//! manager sent them); errors keep their class for the exit code.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;
use clap::Subcommand;
use tessera_proto::control::{NodeScrub, ScrubAction, ScrubCursor, ScrubStats};

use crate::Output;
use crate::access::Access;
use crate::progress::format_secs;
use crate::size::format_size;

#[derive(Subcommand)]
pub enum ScrubCmd {
    /// Every node's scrubbing: its state, pass, where it is, and what it found and repaired.
    Status,
    /// Start a pass on a node now, or resume its paused one.
    Start { node_id: u64 },
    /// Stop a node's scrubbing until started again (it keeps its place).
    Pause { node_id: u64 },
}

pub async fn scrub(access: Access, output: Output, cmd: ScrubCmd) -> Result<()> {
    let client = access.client("tessera CLI").await?;
    let (node_id, action) = match cmd {
        ScrubCmd::Status => {
            let nodes = client.scrub_status().await?;
            if output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&nodes)?);
            } else {
                for line in status_table(&nodes, unix_ms()) {
                    println!("{line}");
                }
            }
            return Ok(());
        }
        ScrubCmd::Start { node_id } => (node_id, ScrubAction::Start),
        ScrubCmd::Pause { node_id } => (node_id, ScrubAction::Pause),
    };
    let node = client.scrub_control(node_id, action).await?;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&node)?);
    } else {
        println!("{}", control_line(&node));
    }
    Ok(())
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What a node's scrubber is doing: `off` (rate 0), `paused`, `behind` (a pass overran its
/// period), `running`, `idle` (between passes).
pub fn state(s: &ScrubStats) -> &'static str {
    if s.bytes_per_sec == 0 {
        "off"
    } else if s.paused {
        "paused"
    } else if s.behind {
        "behind"
    } else if s.running {
        "running"
    } else {
        "idle"
    }
}

/// `group/volume:chunk@block` of the next region; `-` before the pass reaches a group.
fn cursor(c: &ScrubCursor) -> String {
    if c.group == 0 {
        return "-".into();
    }
    format!("{}/{}:{}@{}", c.group, c.volume, c.chunk, c.block)
}

/// When the last full pass ended, as an age from `now_ms`: `never` if none has.
fn last_pass(done_ms: u64, now_ms: u64) -> String {
    if done_ms == 0 {
        return "never".into();
    }
    let secs = now_ms.saturating_sub(done_ms) / 1000;
    if secs >= 2 * 86_400 {
        format!("{}d {}h ago", secs / 86_400, secs % 86_400 / 3600)
    } else {
        format!("{} ago", format_secs(secs))
    }
}

const HEADER: [&str; 12] = [
    "NODE",
    "STATE",
    "PASS",
    "CURSOR",
    "LAST FULL PASS",
    "CHECKED",
    "BLOCKS",
    "BAD",
    "DIVERGENT",
    "REPAIRED",
    "UNREPAIRABLE",
    "APPLIED",
];

fn row(cells: &[String]) -> String {
    format!(
        "{:>4} {:<8} {:>5} {:<20} {:<14} {:>10} {:>10} {:>5} {:>9} {:>8} {:>12} {:>7}",
        cells[0],
        cells[1],
        cells[2],
        cells[3],
        cells[4],
        cells[5],
        cells[6],
        cells[7],
        cells[8],
        cells[9],
        cells[10],
        cells[11]
    )
    .trim_end()
    .to_string()
}

/// `scrub status`'s table, one row per node (a node not heard from since the manager leader
/// took over is `unknown`), and a line naming the nodes with unrepairable blocks if any.
pub fn status_table(nodes: &[NodeScrub], now_ms: u64) -> Vec<String> {
    let mut lines = vec![row(&HEADER.map(String::from))];
    for n in nodes {
        let cells = match &n.stats {
            None => {
                let mut c = vec!["-".to_string(); HEADER.len()];
                c[0] = n.node_id.to_string();
                c[1] = "unknown".into();
                c
            }
            Some(s) => vec![
                n.node_id.to_string(),
                state(s).into(),
                s.pass.to_string(),
                cursor(&s.cursor),
                last_pass(s.last_pass_done_ms, now_ms),
                format_size(s.bytes_checked),
                s.blocks_checked.to_string(),
                s.bad_blocks.to_string(),
                s.divergent_blocks.to_string(),
                s.repaired.to_string(),
                s.unrepairable.to_string(),
                s.repair_blocks_applied.to_string(),
            ],
        };
        lines.push(row(&cells));
    }
    let unrepairable: Vec<String> = nodes
        .iter()
        .filter(|n| n.stats.as_ref().is_some_and(|s| s.unrepairable > 0))
        .map(|n| n.node_id.to_string())
        .collect();
    if !unrepairable.is_empty() {
        lines.push(format!(
            "\nunrepairable blocks found by node(s) {}: no majority of replicas agrees on them, \
             reads of them fail; the nodes' logs name each block",
            unrepairable.join(",")
        ));
    }
    lines
}

/// What `scrub start|pause` says of the node after the action.
pub fn control_line(n: &NodeScrub) -> String {
    match &n.stats {
        None => format!(
            "node {} ({}): scrubbing state not reported",
            n.node_id, n.addr
        ),
        Some(s) => format!(
            "node {} ({}): scrubbing {}, pass {}, next region {}",
            n.node_id,
            n.addr,
            state(s),
            s.pass,
            cursor(&s.cursor)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_MS: u64 = 86_400_000;

    fn stats() -> ScrubStats {
        ScrubStats {
            running: true,
            bytes_per_sec: 16 << 20,
            period_secs: 604_800,
            pass: 3,
            pass_started_ms: 10 * DAY_MS,
            last_pass_done_ms: 9 * DAY_MS,
            cursor: ScrubCursor {
                group: 5,
                volume: 1,
                chunk: 9,
                block: 2048,
            },
            bytes_checked: 3 << 30,
            blocks_checked: 786_432,
            regions: 700,
            bad_blocks: 2,
            divergent_blocks: 1,
            repaired: 3,
            unrepairable: 0,
            repair_blocks_applied: 1,
            ..ScrubStats::default()
        }
    }

    #[test]
    fn the_state_says_off_paused_behind_running_or_idle_in_that_order() {
        let s = stats();
        assert_eq!(state(&s), "running");
        assert_eq!(
            state(&ScrubStats {
                running: false,
                ..s.clone()
            }),
            "idle"
        );
        assert_eq!(
            state(&ScrubStats {
                behind: true,
                ..s.clone()
            }),
            "behind"
        );
        let paused = ScrubStats {
            paused: true,
            running: false,
            behind: true,
            ..s.clone()
        };
        assert_eq!(state(&paused), "paused");
        assert_eq!(
            state(&ScrubStats {
                bytes_per_sec: 0,
                ..paused
            }),
            "off"
        );
    }

    /// One row per node with every column; a node without a report is `unknown`; an
    /// unrepairable block is called out under the table.
    #[test]
    fn status_shows_each_nodes_pass_position_and_findings() {
        let now = 10 * DAY_MS + 3_723_000;
        let nodes = vec![
            NodeScrub {
                node_id: 1,
                addr: "127.0.0.1:7500".into(),
                stats: Some(stats()),
            },
            NodeScrub {
                node_id: 2,
                addr: "127.0.0.1:7501".into(),
                stats: Some(ScrubStats {
                    bytes_per_sec: 16 << 20,
                    unrepairable: 4,
                    ..ScrubStats::default()
                }),
            },
            NodeScrub {
                node_id: 3,
                addr: "127.0.0.1:7502".into(),
                stats: None,
            },
        ];
        let t = status_table(&nodes, now);
        assert_eq!(
            t,
            [
                "NODE STATE     PASS CURSOR               LAST FULL PASS    CHECKED     BLOCKS   BAD DIVERGENT REPAIRED UNREPAIRABLE APPLIED",
                "   1 running      3 5/1:9@2048           25h 02m ago         3 GiB     786432     2         1        3            0       1",
                "   2 idle         0 -                    never                 0 B          0     0         0        0            4       0",
                "   3 unknown      - -                    -                       -          -     -         -        -            -       -",
                "\nunrepairable blocks found by node(s) 2: no majority of replicas agrees on them, reads of them fail; the nodes' logs name each block",
            ]
        );
        assert_eq!(last_pass(DAY_MS, 9 * DAY_MS + 3_600_000), "8d 1h ago");
        assert_eq!(last_pass(DAY_MS, DAY_MS + 42_000), "42s ago");
        // A clock behind the node's: no negative age.
        assert_eq!(last_pass(DAY_MS, 0), "0s ago");
    }

    #[test]
    fn start_and_pause_say_the_nodes_state_after() {
        let mut n = NodeScrub {
            node_id: 2,
            addr: "127.0.0.1:7501".into(),
            stats: Some(ScrubStats {
                paused: true,
                ..stats()
            }),
        };
        assert_eq!(
            control_line(&n),
            "node 2 (127.0.0.1:7501): scrubbing paused, pass 3, next region 5/1:9@2048"
        );
        n.stats = Some(ScrubStats {
            cursor: ScrubCursor::default(),
            ..stats()
        });
        assert_eq!(
            control_line(&n),
            "node 2 (127.0.0.1:7501): scrubbing running, pass 3, next region -"
        );
    }

    /// The JSON is the manager's answer as it is: it reads back unchanged.
    #[test]
    fn json_is_the_node_list_as_sent() {
        let nodes = vec![NodeScrub {
            node_id: 1,
            addr: "127.0.0.1:7500".into(),
            stats: Some(stats()),
        }];
        let json = serde_json::to_value(&nodes).unwrap();
        assert_eq!(json[0]["stats"]["cursor"]["block"], 2048);
        assert_eq!(json[0]["stats"]["unrepairable"], 0);
        let back: Vec<NodeScrub> = serde_json::from_value(json).unwrap();
        assert_eq!(back, nodes);
    }
}
