//! Integration tests of `mechanics-store`: the backend-independent conformance suite
//! (`conformance`), run on SQLite files and on a real PostgreSQL, and the tests of what only one
//! backend has (`sqlite`: migrations, pragmas, crash safety, group commit; `postgres`: several
//! stores on one database, notifications, migrations under a lock, restarts).

/// One `#[tokio::test]` per conformance function in module `$module`, each on a fresh store
/// from `$fresh` (an async fn giving a guard that keeps the store's database, and the store).
/// The list is written once so that no backend can skip a test.
macro_rules! conformance_suite {
    ($module:ident, $fresh:path) => {
        conformance_suite!(@tests $module, $fresh;
            registry_upserts_count_revisions_and_bump_the_version,
            invalid_registry_input_is_refused_naming_the_field,
            a_typescript_module_is_stored_with_what_runs_and_shown_as_written,
            events_are_deduplicated_per_source_and_delivery_id,
            events_are_deduplicated_per_source_and_body_hash_within_the_window,
            events_move_only_along_their_lifecycle,
            one_task_per_event_and_worker_and_per_idempotency_key,
            claims_take_due_tasks_under_a_lease_and_completions_are_fenced,
            claiming_an_events_task_dispatches_the_matched_event,
            expired_leases_are_requeued_and_the_late_reply_is_rejected,
            retry_cancel_release_and_reschedule_follow_the_lifecycle,
            listings_filter_and_page_newest_first,
            task_listings_filter_by_creation_time,
            ended_tasks_are_counted_per_bucket_and_failing_workers_ranked,
            next_due_reports_the_earliest_work,
            cron_fires_create_one_task_per_worker_and_time,
            a_skipped_cron_fire_is_claimed_once_and_makes_no_task,
            logs_are_filtered_paged_and_pruned,
            an_idle_store_runs_no_queries,
            concurrent_creates_all_commit_with_distinct_ids,
            token_buckets_reserve_slots_and_refuse_without_taking,
            write_back_claims_hide_events_until_they_expire,
            instances_heartbeat_list_and_leave,
            renewed_leases_keep_a_claim_and_stale_ones_are_ignored,
            text_with_nul_characters_is_stored,
            console_output_is_kept_per_attempt_in_order,
            per_actor_limits_count_events_in_a_sliding_window_once_each,
            an_event_every_policy_refused_ends_ignored,
            api_keys_are_created_once_listed_revoked_and_bump_the_version,
            invalid_api_keys_are_refused_and_change_nothing,
            api_key_use_is_recorded_without_moving_back_or_the_version,
            a_paused_workers_tasks_stay_pending_until_it_is_resumed,
            a_worker_with_unfinished_tasks_is_removed_only_by_force_which_cancels_them,
            a_worker_removed_while_its_cron_fires_leaves_no_unfinished_task,
            attempts_are_recorded_per_claim_and_listed_in_order,
            remote_nodes_are_stored_by_reference_replaced_deleted_and_bump_the_version,
            invalid_remote_nodes_are_refused_naming_the_field,
        );
    };
    (@tests $module:ident, $fresh:path; $($name:ident),* $(,)?) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (_database, store) = $fresh().await;
                    crate::conformance::$name(&store).await;
                }
            )*
        }
    };
}

mod conformance;
mod postgres;
mod sqlite;

use mechanics_proto::domain::{SourceSpec, WorkerSpec};
use mechanics_store::SqliteStore;
use serde_json::json;
use tempfile::TempDir;

conformance_suite!(on_sqlite, crate::fresh_sqlite);
conformance_suite!(on_postgres, crate::postgres::fresh_postgres);

/// A fresh store on a real file in a temporary directory (removed when the `TempDir` drops).
fn temp_store() -> (TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("mechanics.db")).unwrap();
    (dir, store)
}

async fn fresh_sqlite() -> (TempDir, SqliteStore) {
    temp_store()
}

/// A valid js worker spec named `name`.
fn js_worker(name: &str) -> WorkerSpec {
    serde_json::from_value(json!({
        "name": name, "kind": "js", "module": "./w.js",
        "triggers": [{ "webhook": { "source": "gh", "events": ["issues.opened"] } }, { "api": true }]
    }))
    .unwrap()
}

/// A valid GitHub source spec named `name`.
fn github_source(name: &str) -> SourceSpec {
    serde_json::from_value(json!({ "name": name, "kind": "github", "secret_env": "GH_SECRET" }))
        .unwrap()
}
