"""Shared by tests in several folders (tests/ is on pytest's pythonpath)."""

#: What QuPath needs of an exported FeatureCollection of detections (checked with jsonschema).
GEOJSON_SCHEMA = {
    "type": "object",
    "required": ["type", "features"],
    "properties": {
        "type": {"const": "FeatureCollection"},
        "features": {"type": "array", "items": {
            "type": "object", "required": ["type", "geometry", "properties"],
            "properties": {
                "type": {"const": "Feature"},
                "geometry": {"type": "object", "required": ["type", "coordinates"],
                             "properties": {"type": {"enum": ["Polygon", "MultiPolygon"]},
                                            "coordinates": {"type": "array", "minItems": 1}}},
                "properties": {"type": "object", "required": ["objectType", "classification", "measurements"],
                               "properties": {"objectType": {"const": "detection"},
                                              "classification": {"type": "object", "required": ["name", "color"]},
                                              "measurements": {"type": "object",
                                                               "additionalProperties": {"type": "number"}}}},
            }}},
    },
}
