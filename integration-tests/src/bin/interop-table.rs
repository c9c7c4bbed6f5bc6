//! Writes the interop matrix recorded by the last `tests/interop.rs` run
//! (`target/interop/`) into README.md, between its marker comments.
//!
//! Run by `scripts/test.sh` after the tests, so the table in the README is
//! always the one the test run produced. Exits 1 when README.md has no markers.

use std::process::ExitCode;

use integration_tests::interop::{render_table, replace_table, results_dir};

fn main() -> ExitCode {
    let dir = results_dir();
    let table = render_table(&dir);
    let cells = table.matches('✅').count();
    let failed = table.matches('❌').count();
    let unsupported = table.matches('🚫').count();
    let total = integration_tests::interop::ClientId::ALL.len()
        * integration_tests::interop::CheckId::ALL.len();
    let mut stamp = format!(
        "{cells} of {total} cells passed, {failed} failed, in the `scripts/test.sh` run that wrote this table."
    );
    if unsupported > 0 {
        stamp.push_str(&format!(
            " 🚫 ({unsupported}): the client cannot do it, checked by the same run \
             (see [Clients over TLS](#clients-over-tls))."
        ));
    }
    let readme_path = integration_tests::workspace_root().join("README.md");
    let readme = match std::fs::read_to_string(&readme_path) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{}: {e}", readme_path.display());
            return ExitCode::FAILURE;
        }
    };
    let Some(new) = replace_table(&readme, &table, &stamp) else {
        eprintln!(
            "{}: the interop-matrix marker comments are missing",
            readme_path.display()
        );
        return ExitCode::FAILURE;
    };
    if new != readme {
        if let Err(e) = std::fs::write(&readme_path, new) {
            eprintln!("{}: {e}", readme_path.display());
            return ExitCode::FAILURE;
        }
    }
    println!("{table}\n{stamp}");
    ExitCode::SUCCESS
}
