//! The crash harness ([`crate::common::crash`]), short: a few SIGKILLs at
//! random instants while three clients upsert and delete and compactions
//! run; after each restart every acknowledged edit is there as acknowledged.
//! `benches/crash.sh` runs the same harness for 200 and more rounds.

use std::time::Duration;

use crate::common;

#[test]
fn kill_9_at_random_instants_loses_no_acknowledged_edit() {
    let r = common::crash::run(4, Duration::from_millis(1500), 20261207);
    assert!(r.clean(), "{r:#?}");
    assert!(r.upserts_acked >= 20 && r.deletes_acked >= 3, "the harness edited too little to mean much: {r:?}");
}
