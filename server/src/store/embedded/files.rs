//! Attachments: their records by room, the quota given back, and the
//! stored contents removed with the last record that names them.

use super::*;

/// Removes `room`'s attachment records in `tx` (see [`forget_attachment_ids`]).
pub(super) fn forget_attachments(
    tx: &redb::WriteTransaction,
    room: Id,
) -> StoreResult<Vec<String>> {
    let (start, end) = (
        attachment_key(room, [0; 12]),
        attachment_key(room, [0xff; 12]),
    );
    let ids = tx
        .open_table(ROOM_ATTACHMENTS)?
        .range(start.as_slice()..=end.as_slice())?
        .map(|entry| {
            entry.map(|(key, _)| {
                let mut id = [0; 12];
                id.copy_from_slice(&key.value()[12..24]);
                Id::from_bytes(id)
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    forget_attachment_ids(tx, &ids)
}

/// Removes the attachment records `ids` in `tx`, giving their bytes back to
/// their uploaders' quotas; returns the contents no record needs any more.
pub(super) fn forget_attachment_ids(
    tx: &redb::WriteTransaction,
    ids: &[Id],
) -> StoreResult<Vec<String>> {
    let mut listed = tx.open_table(ROOM_ATTACHMENTS)?;
    let mut records = tx.open_table(ATTACHMENTS)?;
    let mut uploaded = tx.open_table(UPLOADED_BYTES)?;
    let mut refs = tx.open_table(BLOB_REFS)?;
    let mut unused = Vec::new();
    for id in ids {
        let Some(record) = records.remove(id.bytes().as_slice())? else {
            continue;
        };
        let attachment: Attachment = serde_json::from_slice(record.value())?;
        drop(record);
        listed.remove(attachment_key(attachment.room_id, id.bytes()).as_slice())?;
        give_back(&mut uploaded, attachment.user_id, attachment.file.size)?;
        for sha256 in std::iter::once(attachment.sha256).chain(attachment.thumbnail_sha256) {
            let count = refs.get(sha256.as_str())?.map_or(0, |v| v.value());
            if count <= 1 {
                refs.remove(sha256.as_str())?;
                unused.push(sha256);
            } else {
                refs.insert(sha256.as_str(), count - 1)?;
            }
        }
    }
    Ok(unused)
}

/// Subtracts `bytes` from what `user` has uploaded.
pub(super) fn give_back(
    uploaded: &mut redb::Table<&[u8], u64>,
    user: Id,
    bytes: u64,
) -> StoreResult<()> {
    let key = user.bytes();
    let used = uploaded.get(key.as_slice())?.map_or(0, |v| v.value());
    uploaded.insert(key.as_slice(), used.saturating_sub(bytes))?;
    Ok(())
}

/// Removes contents no record needs, after the commit that made them so:
/// should removing fail, a file is left over, never a record without its file.
pub(super) fn remove_blobs(blobs: &crate::store::blob_dir::BlobDir, unused: Vec<String>) {
    for sha256 in unused {
        if let Err(e) = blobs.remove(&sha256) {
            tracing::warn!(error = %e, "cannot remove a deleted file");
        }
    }
}

pub(super) fn attachment_key(room: Id, attachment: [u8; 12]) -> [u8; 24] {
    let mut key = [0; 24];
    key[..12].copy_from_slice(&room.bytes());
    key[12..].copy_from_slice(&attachment);
    key
}
