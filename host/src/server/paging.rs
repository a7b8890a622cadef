//! Paged listings: `?limit=N&after=CURSOR`, answered with the page and `next`,
//! the cursor of the following page (null after the last). A listing never
//! answers more than [`MAX_PAGE`] items, so its size is bounded whatever the
//! server holds.

use serde::Deserialize;
use utoipa::IntoParams;

use super::error::ApiError;

/// Items a page holds when `limit` is not given.
pub(super) const DEFAULT_PAGE: usize = 100;

/// Most items a page holds.
pub(super) const MAX_PAGE: usize = 1000;

/// Longest text of a bulky field (an endpoint's `params`, a plugin's
/// `params_schema`) that a listing still carries; longer ones are left out of
/// list items (fetch the one item for them).
pub(super) const LISTED_FIELD_BYTES: usize = 1024;

/// The query of a paged listing.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct PageQuery {
    /// Most items in the answer, 1 to 1000. Default 100.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// Where the previous page ended (its `next`); left out for the first page.
    after: Option<String>,
}

impl PageQuery {
    /// The page size asked for; 400 `bad_limit` outside 1 to [`MAX_PAGE`].
    pub(super) fn limit(&self) -> Result<usize, ApiError> {
        match self.limit {
            None => Ok(DEFAULT_PAGE),
            Some(limit) if (1..=MAX_PAGE).contains(&limit) => Ok(limit),
            Some(limit) => Err(ApiError::bad_request(
                "bad_limit",
                format!("limit must be between 1 and {MAX_PAGE}, not {limit}"),
            )),
        }
    }

    /// The cursor the page starts after, if any.
    pub(super) fn after(&self) -> Option<&str> {
        self.after.as_deref()
    }
}

/// The page of `items` (sorted by `key`, increasing) that follows the query's
/// cursor, and the cursor of the next page.
pub(super) fn page<T>(
    items: Vec<T>,
    key: impl Fn(&T) -> String,
    query: &PageQuery,
) -> Result<(Vec<T>, Option<String>), ApiError> {
    let limit = query.limit()?;
    let mut page: Vec<T> = items
        .into_iter()
        .filter(|item| query.after().is_none_or(|after| key(item).as_str() > after))
        .take(limit + 1)
        .collect();
    Ok(cut(&mut page, limit, key))
}

/// Cuts `page` (at most `limit + 1` items, fetched so) to `limit`: the next
/// cursor is the last kept item's key when there was more.
pub(super) fn cut<T>(
    page: &mut Vec<T>,
    limit: usize,
    key: impl Fn(&T) -> String,
) -> (Vec<T>, Option<String>) {
    let more = page.len() > limit;
    page.truncate(limit);
    let next = if more { page.last().map(&key) } else { None };
    (std::mem::take(page), next)
}

/// `text` parsed as JSON for a list item, or `None` when longer than
/// [`LISTED_FIELD_BYTES`].
pub(super) fn listed_json(text: &str) -> Option<serde_json::Value> {
    (text.len() <= LISTED_FIELD_BYTES)
        .then(|| serde_json::from_str(text).unwrap_or(serde_json::Value::Null))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(limit: Option<usize>, after: Option<&str>) -> PageQuery {
        PageQuery {
            limit,
            after: after.map(str::to_owned),
        }
    }

    #[test]
    fn pages_follow_each_other_without_gaps_or_repeats() {
        let items: Vec<String> = (0..25).map(|i| format!("item-{i:02}")).collect();
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let (page, next) = page(
                items.clone(),
                Clone::clone,
                &query(Some(10), after.as_deref()),
            )
            .unwrap();
            assert!(page.len() <= 10);
            seen.extend(page);
            match next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, items);
    }

    #[test]
    fn limits_outside_the_range_are_refused() {
        for limit in [0, MAX_PAGE + 1] {
            let error = query(Some(limit), None).limit().unwrap_err();
            assert_eq!(error.code, "bad_limit");
        }
        assert_eq!(query(None, None).limit().unwrap(), DEFAULT_PAGE);
    }
}
