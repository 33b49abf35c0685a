//! The indexes, created at start-up: uniqueness lives here, never in a
//! read-then-write of the application, so it holds across pods; each other
//! index serves a query of the store.

use super::*;

impl MongoStore {
    /// Creates the indexes; says whether the server took the text index.
    pub(super) async fn create_indexes(&self) -> StoreResult<bool> {
        let unique = |name: &str| {
            IndexOptions::builder()
                .unique(true)
                .name(name.to_owned())
                .build()
        };
        self.users()
            .create_indexes([
                IndexModel::builder()
                    .keys(doc! {"username_key": 1})
                    .options(unique(USERNAME_INDEX))
                    .build(),
                IndexModel::builder()
                    .keys(doc! {"email": 1})
                    .options(unique(EMAIL_INDEX))
                    .build(),
            ])
            .await
            .map_err(map_error)?;
        self.rooms()
            .create_indexes([
                IndexModel::builder()
                    .keys(doc! {"direct_key": 1})
                    .options(
                        IndexOptions::builder()
                            .unique(true)
                            .sparse(true)
                            .name("direct_key_unique".to_owned())
                            .build(),
                    )
                    .build(),
                IndexModel::builder().keys(doc! {"members": 1}).build(),
                IndexModel::builder().keys(doc! {"is_private": 1}).build(),
            ])
            .await
            .map_err(map_error)?;
        // One index serves both uniqueness of seq within a room and history reads,
        // which filter on room_id and sort on seq.
        self.messages()
            .create_index(
                IndexModel::builder()
                    .keys(doc! {"room_id": 1, "seq": 1})
                    .options(unique("room_seq_unique"))
                    .build(),
            )
            .await
            .map_err(map_error)?;
        // Search: MongoDB's text index of message text (not Atlas Search).
        let text = self
            .messages()
            .create_index(
                IndexModel::builder()
                    .keys(doc! {"content": "text"})
                    .options(
                        IndexOptions::builder()
                            .name("content_text".to_owned())
                            .default_language("none".to_owned())
                            .build(),
                    )
                    .build(),
            )
            .await;
        let text_index = match text {
            Ok(_) => true,
            Err(e) => {
                tracing::info!(
                    error = %e,
                    "no text index on this server; search scans with patterns instead"
                );
                false
            }
        };
        // Thread replies by the message they answer; sparse: only replies have one.
        self.messages()
            .create_index(
                IndexModel::builder()
                    .keys(doc! {"room_id": 1, "reply_to": 1, "seq": 1})
                    .options(
                        IndexOptions::builder()
                            .sparse(true)
                            .name("room_reply_to_seq".to_owned())
                            .build(),
                    )
                    .build(),
            )
            .await
            .map_err(map_error)?;
        // A sender's dedupe key names one message of its room; partial: only
        // messages sent with a `client_id` have one.
        self.messages()
            .create_index(
                IndexModel::builder()
                    .keys(doc! {"room_id": 1, "dedupe": 1})
                    .options(
                        IndexOptions::builder()
                            .unique(true)
                            .partial_filter_expression(doc! {"dedupe": {"$exists": true}})
                            .name(DEDUPE_INDEX.to_owned())
                            .build(),
                    )
                    .build(),
            )
            .await
            .map_err(map_error)?;
        // Edits and deletions by the message they change, for history pages
        // to show messages as they are now; sparse: only changes have one.
        self.messages()
            .create_index(
                IndexModel::builder()
                    .keys(doc! {"room_id": 1, "target_seq": 1})
                    .options(
                        IndexOptions::builder()
                            .sparse(true)
                            .name("room_target_seq".to_owned())
                            .build(),
                    )
                    .build(),
            )
            .await
            .map_err(map_error)?;
        // Documents with an `expires_at` are removed by MongoDB once it passes.
        let expiry = || {
            IndexModel::builder()
                .keys(doc! {"expires_at": 1})
                .options(
                    IndexOptions::builder()
                        .expire_after(Duration::ZERO)
                        .name("expiry_ttl".to_owned())
                        .build(),
                )
                .build()
        };
        self.refresh_tokens()
            .create_index(expiry())
            .await
            .map_err(map_error)?;
        // Revocation deletes by family (sign-out, reuse) or by user (sign-out
        // everywhere, password change).
        for key in ["family", "user_id"] {
            self.refresh_tokens()
                .create_index(IndexModel::builder().keys(doc! {key: 1}).build())
                .await
                .map_err(map_error)?;
        }
        // A room's attachments (its deletion); unsent ones by age (expiry).
        for keys in [doc! {"room_id": 1}, doc! {"sent": 1, "created_at": 1}] {
            self.attachments()
                .create_index(IndexModel::builder().keys(keys).build())
                .await
                .map_err(map_error)?;
        }
        Ok(text_index)
    }
}
