//! The config file the control-plane benchmarks edit (`xds-fleet`,
//! `reload-cost`): `clusters` concise clusters of two endpoints each.
//! Revision `generation` moves one endpoint of cluster 0 (or, with
//! `cds_only`, changes its connect timeout), which is what one edit of the
//! benchmarks is.

pub fn config(clusters: usize, generation: usize, cds_only: bool) -> String {
    let mut s = String::from("clusters:\n");
    for i in 0..clusters {
        let port = if i == 0 && !cds_only {
            20000 + generation
        } else {
            30000 + i % 30000
        };
        s.push_str(&format!(
            "  - name: c-{i}\n    endpoints: [127.0.0.1:{}, 127.0.0.2:{port}]\n",
            10000 + i % 10000
        ));
        if i == 0 && cds_only {
            s.push_str(&format!("    connect_timeout: {}s\n", 1 + generation));
        }
    }
    s
}
