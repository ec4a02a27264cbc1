"""The vocabulary of a prescription: restorations, margins, materials, remake reasons."""

RESTORATIONS = {
    "crown": "Crown",
    "bridge": "Bridge",
    "inlay_onlay": "Inlay / onlay",
    "veneer": "Veneer",
    "implant_crown": "Implant crown",
    "implant_bridge": "Implant bridge",
    "full_denture": "Full denture",
    "partial_denture": "Partial denture",
    "aligner": "Aligners",
    "night_guard": "Night guard",
    "retainer": "Retainer",
    "other": "Other",
}
# Restorations whose margin the lab must know; and those where the shade matters.
NEEDS_MARGIN = frozenset({"crown", "bridge", "implant_crown", "implant_bridge", "inlay_onlay", "veneer"})
NEEDS_SHADE = frozenset({
    "crown", "bridge", "implant_crown", "implant_bridge", "inlay_onlay", "veneer",
    "full_denture", "partial_denture",
})
# Restorations that are made for an arch, not for named teeth.
ARCH_WORK = frozenset({"full_denture", "aligner", "night_guard", "retainer"})

MARGINS = {
    "chamfer": "Chamfer",
    "shoulder": "Shoulder",
    "knife_edge": "Knife edge",
    "feather_edge": "Feather edge",
    "bevel": "Bevelled shoulder",
}
MATERIALS = [
    "zirconia", "lithium disilicate", "PFM", "full cast gold", "PMMA", "composite", "acrylic",
    "CoCr", "titanium", "thermoplastic", "hard acrylic", "soft EVA",
]
SHADES = [
    "A1", "A2", "A3", "A3.5", "A4", "B1", "B2", "B3", "B4", "C1", "C2", "C3", "C4", "D2", "D3", "D4",
    "BL1", "BL2", "BL3", "BL4",
]
REMAKE_REASONS = {"fit": "Fit", "shade": "Shade", "design": "Design", "damaged": "Damaged", "other": "Other"}
REMAKE_PAYERS = {"practice": "Practice", "lab": "Lab"}
ORIGINS = {"manual": "Manual entry", "itero": "iTero", "medit": "Medit", "3shape": "3Shape TRIOS",
           "upload": "Scan upload"}
STAGES = {"final": "Final", "try_in": "Try-in"}
