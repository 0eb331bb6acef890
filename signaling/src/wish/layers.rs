//! The WHEP video layer selection extension (the WHEP core extensions draft): a player
//! POSTs the layer it wants (`{"rid": "h"}`, `{"spatialLayerId": 0}`) to `…/layer`, and
//! DELETEs it to leave the choice to the server again. The `layers` event of its event
//! stream lists the layers there are.
//!
//! The gateway cannot tell which of the stage's tracks a video section carries at a given
//! moment (the shard fills sections as presenters come and go), so a choice holds for
//! every video section and every track that comes later, as `?quality=` does.

use serde::Deserialize;
use serde_json::{Value, json};
use tutti_shard_api::simulcast::rank_layers;

/// The `Link` relation that announces the extension.
pub const LAYER_REL: &str = "urn:ietf:params:whep:ext:core:layer";
/// The largest layer request body.
pub const MAX_REQUEST_BYTES: usize = 1024;

/// An m-line index, as a string (the draft) or a number (what some players send).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum MediaId {
    Text(String),
    Number(u64),
}

/// A layer request's body; unknown fields are ignored, as the draft asks of extensions.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerRequest {
    media_id: Option<MediaId>,
    rid: Option<String>,
    spatial_layer_id: Option<u8>,
    max_spatial_layer_id: Option<u8>,
    temporal_layer_id: Option<u8>,
    max_temporal_layer_id: Option<u8>,
    max_width: Option<u32>,
    max_height: Option<u32>,
}

/// Parses a layer request body (a JSON object).
pub fn parse(body: &str) -> Result<LayerRequest, String> {
    serde_json::from_str(body).map_err(|err| format!("a layer request is a JSON object: {err}"))
}

/// The quality (`low`, `medium` or `high`) a request stands for, given the indexes of the
/// offer's video sections and the rids of the stage's video now, lowest first; `None` for
/// a request without constraints (the server's choice again); the error says why it
/// cannot be met.
pub fn choose(
    request: &LayerRequest,
    video_sections: &[usize],
    rids: &[String],
) -> Result<Option<&'static str>, String> {
    if video_sections.is_empty() {
        return Err("the offer has no video section".into());
    }
    if let Some(id) = &request.media_id {
        let index = match id {
            MediaId::Text(text) => text.parse::<u64>().ok(),
            MediaId::Number(number) => Some(*number),
        };
        if !index.is_some_and(|i| video_sections.iter().any(|&s| s as u64 == i)) {
            return Err("mediaId names no video section of the offer".into());
        }
    }
    if let Some(rid) = &request.rid {
        let names: Vec<&str> = rids.iter().map(String::as_str).collect();
        let ranks = rank_layers(&names);
        let rank = names
            .iter()
            .position(|name| name == rid)
            .and_then(|i| ranks.get(i))
            .ok_or_else(|| format!("no layer has rid {rid:?} (see the layers event)"))?;
        return Ok(Some(quality_of_rank(*rank)));
    }
    let spatial = match (request.spatial_layer_id, request.max_spatial_layer_id) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if let Some(spatial) = spatial {
        return Ok(Some(quality_of_rank(spatial)));
    }
    // Constraints this server cannot meet are refused rather than taken for none.
    if request.temporal_layer_id.is_some() || request.max_temporal_layer_id.is_some() {
        return Err("temporal layers cannot be chosen: choose a rid or a spatialLayerId".into());
    }
    if request.max_width.is_some() || request.max_height.is_some() {
        return Err(
            "maxWidth and maxHeight are not supported: choose a rid or a spatialLayerId".into(),
        );
    }
    Ok(None)
}

fn quality_of_rank(rank: u8) -> &'static str {
    match rank {
        0 => "low",
        1 => "medium",
        _ => "high",
    }
}

/// The `layers` event's data: for each video section of the offer, the layers of the
/// stage's video, best first (each with its `rid`); `None` when there is no simulcast.
pub fn layers_event(video_sections: &[usize], rids: &[String]) -> Option<String> {
    if rids.is_empty() || video_sections.is_empty() {
        return None;
    }
    let layers: Vec<Value> = rids.iter().rev().map(|rid| json!({ "rid": rid })).collect();
    let data: serde_json::Map<String, Value> = video_sections
        .iter()
        .map(|index| (index.to_string(), Value::Array(layers.clone())))
        .collect();
    Some(Value::Object(data).to_string())
}

/// The `layers` event that says the stage's video has no layers any more: an empty list
/// for each video section.
pub fn cleared_event(video_sections: &[usize]) -> String {
    let data: serde_json::Map<String, Value> = video_sections
        .iter()
        .map(|index| (index.to_string(), Value::Array(Vec::new())))
        .collect();
    Value::Object(data).to_string()
}

/// The indexes of an offer's video sections (`m=video` lines, counted from 0).
pub fn video_sections(offer: &str) -> Vec<usize> {
    offer
        .lines()
        .filter(|l| l.starts_with("m="))
        .enumerate()
        .filter(|(_, l)| l.starts_with("m=video"))
        .map(|(index, _)| index)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rids() -> Vec<String> {
        ["q", "h", "f"].map(String::from).to_vec()
    }

    #[test]
    fn a_layer_request_becomes_the_quality_of_its_layer() {
        let video = [1];
        let ask = |body: &str| choose(&parse(body).unwrap(), &video, &rids());
        assert_eq!(ask(r#"{"mediaId": "1", "rid": "q"}"#), Ok(Some("low")));
        assert_eq!(ask(r#"{"rid": "h"}"#), Ok(Some("medium")));
        assert_eq!(
            ask(r#"{"mediaId": 1, "rid": "f", "temporalLayerId": 1}"#),
            Ok(Some("high"))
        );
        assert_eq!(ask(r#"{"spatialLayerId": 0}"#), Ok(Some("low")));
        assert_eq!(
            ask(r#"{"spatialLayerId": 2, "maxSpatialLayerId": 1}"#),
            Ok(Some("medium"))
        );
        assert_eq!(
            ask(r#"{"mediaId": "1"}"#),
            Ok(None),
            "back to the server's choice"
        );
        assert_eq!(ask("{}"), Ok(None));
        assert!(
            ask(r#"{"temporalLayerId": 0}"#)
                .unwrap_err()
                .contains("temporal")
        );
        // Names of no convention rank by the order they came in, lowest first.
        let other = ["r0", "r1", "r2"].map(String::from);
        let pick = |rid: &str| {
            choose(
                &parse(&format!("{{\"rid\": \"{rid}\"}}")).unwrap(),
                &video,
                &other,
            )
        };
        assert_eq!(pick("r0"), Ok(Some("low")));
        assert_eq!(pick("r2"), Ok(Some("high")));
        assert!(
            choose(&parse("{}").unwrap(), &[], &rids()).is_err(),
            "no video section"
        );
        assert!(ask(r#"{"rid": "x"}"#).unwrap_err().contains("no layer"));
        assert!(
            ask(r#"{"mediaId": "0", "rid": "q"}"#)
                .unwrap_err()
                .contains("mediaId")
        );
        assert!(ask(r#"{"mediaId": "one"}"#).is_err());
        assert!(
            ask(r#"{"maxWidth": 640}"#)
                .unwrap_err()
                .contains("maxWidth")
        );
        assert!(parse("[1]").is_err());
        assert!(parse(r#"{"spatialLayerId": -1}"#).is_err());
    }

    #[test]
    fn the_layers_event_lists_the_stages_layers_for_each_video_section() {
        let offer = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n\
                     m=video 9 UDP/TLS/RTP/SAVPF 96\r\n";
        let sections = video_sections(offer);
        assert_eq!(sections, vec![1, 2]);
        let data: Value = serde_json::from_str(&layers_event(&sections, &rids()).unwrap()).unwrap();
        assert_eq!(
            data,
            json!({"1": [{"rid": "f"}, {"rid": "h"}, {"rid": "q"}],
                   "2": [{"rid": "f"}, {"rid": "h"}, {"rid": "q"}]})
        );
        assert_eq!(layers_event(&sections, &[]), None);
        assert_eq!(layers_event(&[], &rids()), None);
        assert_eq!(cleared_event(&sections), r#"{"1":[],"2":[]}"#);
    }
}
