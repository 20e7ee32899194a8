//! openraft's own storage conformance suite, run against the RocksDB store.

use authsec_storage::{open, LogStore, StateMachine, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = open(dir.path()).expect("open store");
        let (tx, _rx) = tokio::sync::watch::channel(Default::default());
        let sm = StateMachine::open(store.clone(), tx).expect("open state machine");
        Ok((dir, LogStore::new(store), sm))
    }
}

#[test]
fn openraft_storage_suite() -> Result<(), StorageError<u64>> {
    Suite::test_all(Builder)
}
