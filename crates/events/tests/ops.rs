//! The service's health, readiness and error contract on both stores.

use rewards_kit::identity::IdentityKey;
use rewards_kit::store::StoreOptions;
use rewards_kit::store_tests;
use rewards_kit::testing::{TestServer, TestStore, assert_ops_contract, assert_unready};

store_tests!(serves_health_and_ready_and_reports_a_lost_store);

async fn serves_health_and_ready_and_reports_a_lost_store(store: TestStore) {
    let state = rewards_events::open(&store.url, &StoreOptions::default()).await.unwrap();
    let server = TestServer::spawn(rewards_events::router(state.clone(), IdentityKey::generate(), 1 << 20)).await;
    assert_ops_contract(&server, &store).await;
    state.store.close().await;
    assert_unready(&server).await;
}
