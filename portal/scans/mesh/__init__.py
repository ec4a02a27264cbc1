"""Mesh files of intraoral scans: reading STL, PLY and OBJ without trusting them (parsers.py), and
telling which jaw each file of an order holds (jaws.py)."""
from portal.scans.mesh.jaws import (
    SOURCE_FILE_NAME,
    SOURCE_GEOMETRY,
    SOURCE_VENDOR,
    bite_links,
    detect_jaws,
    jaw_from_name,
)
from portal.scans.mesh.parsers import (
    CHUNK_SIZE,
    MESH_FORMATS,
    REFERENCE_ONLY_FORMATS,
    MeshError,
    MeshInfo,
    Progress,
    check_head,
    extension_format,
    human_bytes,
    inspect,
    reference_only,
)

__all__ = [
    "CHUNK_SIZE", "MESH_FORMATS", "REFERENCE_ONLY_FORMATS", "SOURCE_FILE_NAME", "SOURCE_GEOMETRY", "SOURCE_VENDOR",
    "MeshError", "MeshInfo", "Progress", "bite_links", "check_head", "detect_jaws", "extension_format",
    "human_bytes", "inspect", "jaw_from_name", "reference_only",
]
