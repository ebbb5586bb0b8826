"""Control-plane operations (REST-JSON, the shapes of botocore's kinesisvideo service model). Pure over the Store."""

from __future__ import annotations

from kvs_edge.emulator.store import Store, StoreError

OPERATIONS = ("/createStream", "/describeStream", "/listStreams", "/deleteStream", "/getDataEndpoint", "/tagStream",
              "/listTagsForStream")
API_NAMES = {"PUT_MEDIA", "GET_MEDIA", "LIST_FRAGMENTS", "GET_MEDIA_FOR_FRAGMENT_LIST", "GET_HLS_STREAMING_SESSION_URL",
             "GET_DASH_STREAMING_SESSION_URL", "GET_CLIP", "GET_IMAGES"}


def _one_of_name_arn(body: dict) -> tuple[str | None, str | None]:
    name, arn = body.get("StreamName"), body.get("StreamARN")
    if name is not None and arn is not None:
        raise StoreError(400, "InvalidArgumentException", "Specify either StreamName or StreamARN, not both.")
    if name is None and arn is None:
        raise StoreError(400, "InvalidArgumentException", "StreamName or StreamARN is required.")
    return name, arn


def handle(store: Store, path: str, body: dict, data_endpoint: str) -> dict:
    """Run one operation; returns the JSON response body (HTTP 200) or raises StoreError (an AWS-shaped error)."""
    if not isinstance(body, dict):
        raise StoreError(400, "SerializationException", "The request body must be a JSON object.")
    if path == "/createStream":
        if "StreamName" not in body:
            raise StoreError(400, "InvalidArgumentException", "StreamName is required.")
        info = store.create(body["StreamName"], retention_hours=body.get("DataRetentionInHours", 0),
                            media_type=body.get("MediaType"), device_name=body.get("DeviceName"),
                            kms_key_id=body.get("KmsKeyId"), tags=body.get("Tags"))
        return {"StreamARN": info["StreamARN"]}
    if path == "/describeStream":
        name, arn = _one_of_name_arn(body)
        return {"StreamInfo": store.describe(name, arn)}
    if path == "/listStreams":
        infos = store.list()
        cond = body.get("StreamNameCondition") or {}
        if cond:
            if cond.get("ComparisonOperator") != "BEGINS_WITH":
                raise StoreError(400, "InvalidArgumentException", "ComparisonOperator must be BEGINS_WITH.")
            prefix = cond.get("ComparisonValue") or ""
            infos = [i for i in infos if i["StreamName"].startswith(prefix)]
        start = 0
        if body.get("NextToken"):
            try:
                start = int(body["NextToken"])
            except ValueError:
                raise StoreError(400, "InvalidArgumentException", "Invalid NextToken.") from None
        limit = body.get("MaxResults") or 10000
        page = infos[start:start + limit]
        out: dict = {"StreamInfoList": page}
        if start + limit < len(infos):
            out["NextToken"] = str(start + limit)
        return out
    if path == "/deleteStream":
        if "StreamARN" not in body:
            raise StoreError(400, "InvalidArgumentException", "StreamARN is required.")
        store.delete(body["StreamARN"], body.get("CurrentVersion"))
        return {}
    if path == "/tagStream":
        name, arn = _one_of_name_arn(body)
        store.tag(name, arn, body.get("Tags") or {})
        return {}
    if path == "/listTagsForStream":
        name, arn = _one_of_name_arn(body)
        return {"Tags": store.tags(name, arn)}
    if path == "/getDataEndpoint":
        if body.get("APIName") not in API_NAMES:
            raise StoreError(400, "InvalidArgumentException", f"APIName must be one of {sorted(API_NAMES)}.")
        name, arn = _one_of_name_arn(body)
        store.get(name, arn)
        return {"DataEndpoint": data_endpoint}
    raise StoreError(404, "UnknownOperationException", f"Unknown operation {path}")
