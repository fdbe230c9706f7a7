//! A layered layout, as Graphviz's `dot` makes: each node on the layer
//! one below its deepest dependency (longest path), nodes ordered within
//! their layer by the mean position of their neighbours (barycentre
//! sweeps, down and up, which undo most crossings of task graphs), then
//! spread evenly and centred.

use crate::Drawing;

/// A node's box.
pub(crate) const NODE_WIDTH: f64 = 140.0;
/// A node's box.
pub(crate) const NODE_HEIGHT: f64 = 40.0;
const GAP_X: f64 = 20.0;
const GAP_Y: f64 = 50.0;
const MARGIN: f64 = 10.0;
const SWEEPS: usize = 4;

/// Where each node goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// The centre of each node, by its index in [`Drawing::nodes`].
    pub centres: Vec<(f64, f64)>,
    /// The layer of each node (0: no dependencies).
    pub layers: Vec<usize>,
    /// The picture's size.
    pub width: f64,
    /// The picture's size.
    pub height: f64,
}

/// Lays the drawing out. Edges that name no node are ignored; nodes on a
/// cycle (a task graph has none) go on a last layer of their own.
pub fn layout(drawing: &Drawing) -> Layout {
    let n = drawing.nodes.len();
    let edges: Vec<(usize, usize)> = drawing
        .edges
        .iter()
        .copied()
        .filter(|&(a, b)| a < n && b < n && a != b)
        .collect();
    let mut preds = vec![Vec::new(); n];
    let mut succs = vec![Vec::new(); n];
    for &(a, b) in &edges {
        preds[b].push(a);
        succs[a].push(b);
    }
    let layers = longest_path_layers(&preds, &succs);
    let depth = layers.iter().copied().max().map_or(0, |d| d + 1);
    let mut rows: Vec<Vec<usize>> = vec![Vec::new(); depth];
    for (node, &layer) in layers.iter().enumerate() {
        rows[layer].push(node);
    }
    let mut position = vec![0usize; n];
    let renumber = |rows: &Vec<Vec<usize>>, position: &mut Vec<usize>| {
        for row in rows {
            for (i, &node) in row.iter().enumerate() {
                position[node] = i;
            }
        }
    };
    renumber(&rows, &mut position);
    for _ in 0..SWEEPS {
        for layer in 1..depth {
            order_by_barycentre(&mut rows[layer], &preds, &position);
            renumber(&rows, &mut position);
        }
        for layer in (0..depth.saturating_sub(1)).rev() {
            order_by_barycentre(&mut rows[layer], &succs, &position);
            renumber(&rows, &mut position);
        }
    }
    let widest = rows.iter().map(Vec::len).max().unwrap_or(0) as f64;
    let row_width = |count: f64| count * NODE_WIDTH + (count - 1.0).max(0.0) * GAP_X;
    let width = row_width(widest) + 2.0 * MARGIN;
    let height = depth as f64 * NODE_HEIGHT + (depth as f64 - 1.0).max(0.0) * GAP_Y + 2.0 * MARGIN;
    let mut centres = vec![(0.0, 0.0); n];
    for (layer, row) in rows.iter().enumerate() {
        let left = (width - row_width(row.len() as f64)) / 2.0;
        let y = MARGIN + layer as f64 * (NODE_HEIGHT + GAP_Y) + NODE_HEIGHT / 2.0;
        for (i, &node) in row.iter().enumerate() {
            let x = left + i as f64 * (NODE_WIDTH + GAP_X) + NODE_WIDTH / 2.0;
            centres[node] = (x, y);
        }
    }
    Layout {
        centres,
        layers,
        width: width.max(2.0 * MARGIN),
        height: height.max(2.0 * MARGIN),
    }
}

/// Kahn's order; each node one layer below its deepest predecessor.
fn longest_path_layers(preds: &[Vec<usize>], succs: &[Vec<usize>]) -> Vec<usize> {
    let n = preds.len();
    let mut missing: Vec<usize> = preds.iter().map(Vec::len).collect();
    let mut layer = vec![0usize; n];
    let mut ready: Vec<usize> = (0..n).filter(|&i| missing[i] == 0).rev().collect();
    let mut placed = vec![false; n];
    while let Some(node) = ready.pop() {
        placed[node] = true;
        for &next in &succs[node] {
            layer[next] = layer[next].max(layer[node] + 1);
            missing[next] -= 1;
            if missing[next] == 0 {
                ready.push(next);
            }
        }
    }
    let last = (0..n)
        .filter(|&i| placed[i])
        .map(|i| layer[i] + 1)
        .max()
        .unwrap_or(0);
    for (node, done) in placed.iter().enumerate() {
        if !done {
            layer[node] = last;
        }
    }
    layer
}

/// Sorts a layer by the mean position of each node's neighbours in the
/// layer next to it; a node without any keeps its place.
fn order_by_barycentre(row: &mut [usize], neighbours: &[Vec<usize>], position: &[usize]) {
    let mut keyed: Vec<(f64, usize)> = row
        .iter()
        .enumerate()
        .map(|(i, &node)| {
            let around = &neighbours[node];
            let key = if around.is_empty() {
                i as f64
            } else {
                around.iter().map(|&m| position[m] as f64).sum::<f64>() / around.len() as f64
            };
            (key, node)
        })
        .collect();
    keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (slot, (_, node)) in row.iter_mut().zip(keyed) {
        *slot = node;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Node;

    fn drawing(n: usize, edges: &[(usize, usize)]) -> Drawing {
        Drawing {
            nodes: vec![Node::default(); n],
            edges: edges.to_vec(),
        }
    }

    #[test]
    fn each_node_lies_below_all_its_dependencies() {
        let d = drawing(5, &[(0, 2), (1, 2), (2, 4), (0, 4), (3, 4)]);
        let l = layout(&d);
        assert_eq!(l.layers, [0, 0, 1, 0, 2]);
        for &(a, b) in &d.edges {
            assert!(l.centres[a].1 < l.centres[b].1);
        }
    }

    #[test]
    fn crossings_of_parallel_chains_are_undone() {
        // Two chains whose second layer starts out crossed: 0->3, 1->2.
        let l = layout(&drawing(4, &[(0, 3), (1, 2)]));
        assert!(l.centres[0].0 < l.centres[1].0);
        assert!(l.centres[3].0 < l.centres[2].0);
    }

    #[test]
    fn a_cycle_or_a_bad_edge_does_not_hang_or_panic() {
        let l = layout(&drawing(3, &[(0, 1), (1, 0), (2, 9)]));
        assert_eq!(l.layers, [1, 1, 0]);
        assert!(layout(&Drawing::default()).width > 0.0);
    }
}
