"""Label maps from each source dataset's native ids to the 19 Cityscapes train ids (255 = ignore).

Every map is a plain literal here, so nothing needs cityscapesscripts at run time; a test checks the Cityscapes table
against cityscapesscripts' own label definitions.

- GTAV and Cityscapes share the Cityscapes *labelIds* (``CITYSCAPES_LABEL_TO_TRAIN``).
- SYNTHIA (RAND-CITYSCAPES) class ids, read from the R channel of the 16-bit ``GT/LABELS`` PNGs
  (``SYNTHIA_TO_TRAIN``, from the MFuser/DAFormer converter; terrain, truck and train never occur in SYNTHIA).
- Mapillary Vistas: keyed by label **name**, because v1.2 (66 labels) and v2.0 (124 labels) number their labels
  differently; the ids are read from the dataset's ``config_v1.2.json`` / ``config_v2.0.json`` at load time.
  Published DG numbers use different tables, so each is a :class:`MapillaryTable` that names its source (reports
  print it): ``openseg`` (default), ``narrow`` and ``definitions``, see :data:`MAPILLARY_TABLES`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from mfuser_model.classes import CITYSCAPES_LABEL_TO_TRAIN, IGNORE_INDEX

__all__ = [
    "CITYSCAPES_LABEL_TO_TRAIN",
    "DEFAULT_MAPILLARY_TABLE",
    "MAPILLARY_CITYSCAPES_DEFINITIONS",
    "MAPILLARY_NARROW",
    "MAPILLARY_OPENSEG",
    "MAPILLARY_TABLES",
    "MAPILLARY_V12_NAMES",
    "SYNTHIA_TO_TRAIN",
    "TRAIN_TO_CITYSCAPES_LABEL",
    "MapillaryTable",
    "build_lut",
    "mapillary_lut",
    "mapillary_name_to_train_id",
    "mapillary_table",
]

# Inverse (train id -> Cityscapes labelId); ignore goes to 0 "unlabeled". Used to write GTAV/Cityscapes-layout
# label files and to feed predictions to the official Cityscapes evaluator.
TRAIN_TO_CITYSCAPES_LABEL: dict[int, int] = {t: k for k, t in CITYSCAPES_LABEL_TO_TRAIN.items()} | {IGNORE_INDEX: 0}

# SYNTHIA class id -> trainId (RAND-CITYSCAPES; ids as in SYNTHIA's README).
SYNTHIA_TO_TRAIN: dict[int, int] = {
    3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9,
    1: 10, 10: 11, 17: 12, 8: 13, 18: 14, 19: 15, 20: 16, 12: 17, 11: 18,
}

# Mapillary Vistas v1.2 label names in id order (0..65), as in its config_v1.2.json. Used only when a dataset
# folder lacks the config file; the folder's own config always wins.
MAPILLARY_V12_NAMES: tuple[str, ...] = (
    "animal--bird", "animal--ground-animal", "construction--barrier--curb", "construction--barrier--fence",
    "construction--barrier--guard-rail", "construction--barrier--other-barrier", "construction--barrier--wall",
    "construction--flat--bike-lane", "construction--flat--crosswalk-plain", "construction--flat--curb-cut",
    "construction--flat--parking", "construction--flat--pedestrian-area", "construction--flat--rail-track",
    "construction--flat--road", "construction--flat--service-lane", "construction--flat--sidewalk",
    "construction--structure--bridge", "construction--structure--building", "construction--structure--tunnel",
    "human--person", "human--rider--bicyclist", "human--rider--motorcyclist", "human--rider--other-rider",
    "marking--crosswalk-zebra", "marking--general", "nature--mountain", "nature--sand", "nature--sky",
    "nature--snow", "nature--terrain", "nature--vegetation", "nature--water", "object--banner", "object--bench",
    "object--bike-rack", "object--billboard", "object--catch-basin", "object--cctv-camera", "object--fire-hydrant",
    "object--junction-box", "object--mailbox", "object--manhole", "object--phone-booth", "object--pothole",
    "object--street-light", "object--support--pole", "object--support--traffic-sign-frame",
    "object--support--utility-pole", "object--traffic-light", "object--traffic-sign--back",
    "object--traffic-sign--front", "object--trash-can", "object--vehicle--bicycle", "object--vehicle--boat",
    "object--vehicle--bus", "object--vehicle--car", "object--vehicle--caravan", "object--vehicle--motorcycle",
    "object--vehicle--on-rails", "object--vehicle--other-vehicle", "object--vehicle--trailer",
    "object--vehicle--truck", "object--vehicle--wheeled-slow", "void--car-mount", "void--ego-vehicle",
    "void--unlabeled",
)

# "definitions": Mapillary name -> train id following the Cityscapes class *definitions* (this project's own reading;
# it matches no published converter, so its numbers are not comparable with papers'; kept to reproduce earlier runs).
# Name (v1.2 / v2.0 spelling)                  -> class          why
#   construction--flat--road                   -> road
#   construction--flat--bike-lane              -> road           Cityscapes: lanes delimited only by markings are road
#   construction--flat--service-lane           -> road
#   construction--flat--crosswalk-plain        -> road           Cityscapes: markings on the road are road
#   marking--* , marking-only--*  (prefix)     -> road           lane markings, zebra, arrows, text, stop lines
#   object--manhole, object--pothole           -> road           lie in the road surface
#   construction--flat--sidewalk               -> sidewalk
#   construction--barrier--curb                -> sidewalk       Cityscapes: sidewalk includes the curb
#   construction--flat--curb-cut               -> sidewalk
#   construction--flat--pedestrian-area        -> sidewalk
#   construction--structure--building          -> building       (bridge, tunnel: own void classes in Cityscapes)
#   construction--barrier--wall                -> wall
#   construction--barrier--fence               -> fence          (guard rail: own void class in Cityscapes)
#   object--support--pole / pole-group         -> pole
#   object--support--utility-pole              -> pole
#   object--support--traffic-sign-frame        -> pole           the frame that carries a sign
#   object--traffic-light, object--traffic-light--* (prefix) -> traffic light
#   object--traffic-sign--front                -> traffic sign   Cityscapes labels the informative front only
#   object--traffic-sign--direction-front, --information-parking, --temporary-front -> traffic sign (v2.0)
#   nature--vegetation                         -> vegetation
#   nature--terrain, nature--sand              -> terrain        Cityscapes: grass, soil or sand
#   nature--sky                                -> sky
#   human--person, human--person--individual, human--person--person-group -> person  (Cityscapes persongroup)
#   human--rider--bicyclist/motorcyclist/other-rider -> rider
#   object--vehicle--car -> car, object--vehicle--truck -> truck, object--vehicle--bus -> bus,
#   object--vehicle--on-rails -> train
#   object--vehicle--motorcycle -> motorcycle, object--vehicle--bicycle -> bicycle
# Everything else (animals, guard rail, other barrier, parking, rail track, bridge, tunnel, mountain, snow, water,
# street furniture, street light heads, sign backs, caravan, trailer, boat, other/wheeled-slow vehicle, void--*)
# -> 255, as their Cityscapes counterparts are void or unlabeled.
MAPILLARY_CITYSCAPES_DEFINITIONS: dict[str, int] = {
    "construction--flat--road": 0,
    "construction--flat--bike-lane": 0,
    "construction--flat--service-lane": 0,
    "construction--flat--crosswalk-plain": 0,
    "object--manhole": 0,
    "object--pothole": 0,
    "construction--flat--sidewalk": 1,
    "construction--barrier--curb": 1,
    "construction--flat--curb-cut": 1,
    "construction--flat--pedestrian-area": 1,
    "construction--structure--building": 2,
    "construction--barrier--wall": 3,
    "construction--barrier--fence": 4,
    "object--support--pole": 5,
    "object--support--pole-group": 5,
    "object--support--utility-pole": 5,
    "object--support--traffic-sign-frame": 5,
    "object--traffic-light": 6,
    "object--traffic-sign--front": 7,
    "object--traffic-sign--direction-front": 7,
    "object--traffic-sign--information-parking": 7,
    "object--traffic-sign--temporary-front": 7,
    "nature--vegetation": 8,
    "nature--terrain": 9,
    "nature--sand": 9,
    "nature--sky": 10,
    "human--person": 11,
    "human--person--individual": 11,
    "human--person--person-group": 11,
    "human--rider--bicyclist": 12,
    "human--rider--motorcyclist": 12,
    "human--rider--other-rider": 12,
    "object--vehicle--car": 13,
    "object--vehicle--truck": 14,
    "object--vehicle--bus": 15,
    "object--vehicle--on-rails": 16,
    "object--vehicle--motorcycle": 17,
    "object--vehicle--bicycle": 18,
}
# Name prefixes mapped as a group in the "definitions" table (v2.0 splits these into many labels).
_CITYSCAPES_PREFIXES: tuple[tuple[str, int], ...] = (
    ("marking--", 0),
    ("marking-only--", 0),
    ("object--traffic-light--", 6),
)

# "narrow": the 66 -> 19 table of the DAFormer-family converters (e.g. HRDA/MIC
# tools/convert_datasets/mapillary.py), which most DG papers' Mapillary numbers use. Exact names only, no prefixes:
# road = road, lane marking general, manhole; sidewalk = curb, sidewalk; pole = pole, utility pole; rider = the three
# rider labels; the other 14 classes map their single namesake. Zebra crossings, bike lanes etc. are ignored.
MAPILLARY_NARROW: dict[str, int] = {
    "construction--flat--road": 0,
    "marking--general": 0,
    "object--manhole": 0,
    "construction--barrier--curb": 1,
    "construction--flat--sidewalk": 1,
    "construction--structure--building": 2,
    "construction--barrier--wall": 3,
    "construction--barrier--fence": 4,
    "object--support--pole": 5,
    "object--support--utility-pole": 5,
    "object--traffic-light": 6,
    "object--traffic-sign--front": 7,
    "nature--vegetation": 8,
    "nature--terrain": 9,
    "nature--sky": 10,
    "human--person": 11,
    "human--rider--bicyclist": 12,
    "human--rider--motorcyclist": 12,
    "human--rider--other-rider": 12,
    "object--vehicle--car": 13,
    "object--vehicle--truck": 14,
    "object--vehicle--bus": 15,
    "object--vehicle--on-rails": 16,
    "object--vehicle--motorcycle": 17,
    "object--vehicle--bicycle": 18,
}

# "openseg": openseg.pytorch's mapillary2cityscape converter, as Rein ships it; its output is the layout MFuser's
# README shows (cityscapes_trainIdLabel/{train,val}/label, half/val_{img,label}). The converter matches each label's
# *readable* name (lower case, spaces and "-" removed): a Cityscapes class name exactly; else, in order, "trafficsign"
# or "front" or "back" -> traffic sign; "onrail" -> train; "cyclist" or "rider" -> rider; "pole" or "streetlight"
# -> pole; "curb" or "pedestrianarea" -> sidewalk; "crosswalkplain", "parking", "bikelane", "servicelane" or
# "lanemarking" -> road; anything else -> ignore. Below is that rule evaluated on the readable names of
# config_v1.2.json and config_v2.0.json (both versions agree on every shared name), keyed by name. Its surprises:
# parking, parking aisle and parking *meter* are road; traffic-sign frame and "Signage - Back" are traffic sign;
# street light is pole; sand, manhole and pothole are ignored; v2.0's traffic lights ("Traffic Light - General
# (Single)" ...) match no exact name and are ignored, except "Traffic Light - Cyclists", which is rider.
MAPILLARY_OPENSEG: dict[str, int] = {
    "construction--flat--road": 0,
    "construction--flat--bike-lane": 0,
    "construction--flat--crosswalk-plain": 0,
    "construction--flat--parking": 0,
    "construction--flat--parking-aisle": 0,
    "construction--flat--service-lane": 0,
    "object--parking-meter": 0,
    "marking--general": 0,
    "marking--crosswalk-zebra": 0,
    "marking--continuous--dashed": 0,
    "marking--continuous--solid": 0,
    "marking--continuous--zigzag": 0,
    "marking--discrete--ambiguous": 0,
    "marking--discrete--arrow--left": 0,
    "marking--discrete--arrow--other": 0,
    "marking--discrete--arrow--right": 0,
    "marking--discrete--arrow--split-left-or-straight": 0,
    "marking--discrete--arrow--split-right-or-straight": 0,
    "marking--discrete--arrow--straight": 0,
    "marking--discrete--crosswalk-zebra": 0,
    "marking--discrete--give-way-row": 0,
    "marking--discrete--give-way-single": 0,
    "marking--discrete--hatched--chevron": 0,
    "marking--discrete--hatched--diagonal": 0,
    "marking--discrete--other-marking": 0,
    "marking--discrete--stop-line": 0,
    "marking--discrete--symbol--bicycle": 0,
    "marking--discrete--symbol--other": 0,
    "marking--discrete--text": 0,
    "marking-only--continuous--dashed": 0,
    "marking-only--discrete--crosswalk-zebra": 0,
    "marking-only--discrete--other-marking": 0,
    "marking-only--discrete--text": 0,
    "construction--flat--sidewalk": 1,
    "construction--barrier--curb": 1,
    "construction--flat--curb-cut": 1,
    "construction--flat--pedestrian-area": 1,
    "construction--structure--building": 2,
    "construction--barrier--wall": 3,
    "construction--barrier--fence": 4,
    "object--support--pole": 5,
    "object--support--pole-group": 5,
    "object--support--utility-pole": 5,
    "object--street-light": 5,
    "object--traffic-light": 6,
    "object--traffic-sign--front": 7,
    "object--traffic-sign--back": 7,
    "object--support--traffic-sign-frame": 7,
    "object--sign--back": 7,
    "object--traffic-sign--ambiguous": 7,
    "object--traffic-sign--direction-back": 7,
    "object--traffic-sign--direction-front": 7,
    "object--traffic-sign--information-parking": 7,
    "object--traffic-sign--temporary-back": 7,
    "object--traffic-sign--temporary-front": 7,
    "nature--vegetation": 8,
    "nature--terrain": 9,
    "nature--sky": 10,
    "human--person": 11,
    "human--person--individual": 11,
    "human--rider--bicyclist": 12,
    "human--rider--motorcyclist": 12,
    "human--rider--other-rider": 12,
    "object--traffic-light--cyclists": 12,
    "object--vehicle--car": 13,
    "object--vehicle--truck": 14,
    "object--vehicle--bus": 15,
    "object--vehicle--on-rails": 16,
    "object--vehicle--motorcycle": 17,
    "object--vehicle--bicycle": 18,
}


@dataclass(frozen=True)
class MapillaryTable:
    """One Mapillary -> Cityscapes table: train ids by label name, and the converter it reproduces.

    Attributes:
        name: the key in :data:`MAPILLARY_TABLES` (what ``mapping=`` takes).
        source: who wrote the table and where, with a URL; reports print it beside the numbers.
        ids: label name -> train id; names absent map to 255.
        prefixes: ``(name prefix, train id)`` pairs for names not in ``ids`` (first match wins).
    """

    name: str
    source: str
    ids: Mapping[str, int]
    prefixes: tuple[tuple[str, int], ...] = field(default=())

    def train_id(self, label_name: str) -> int:
        """Train id (0..18) of a Mapillary label name, or 255 when this table has no class for it."""
        if label_name in self.ids:
            return self.ids[label_name]
        for prefix, train_id in self.prefixes:
            if label_name.startswith(prefix):
                return train_id
        return IGNORE_INDEX


MAPILLARY_TABLES: dict[str, MapillaryTable] = {
    "openseg": MapillaryTable(
        "openseg",
        "openseg.pytorch mapillary2cityscape, as Rein ships it (the layout in MFuser's README): "
        "https://github.com/w1oves/Rein/blob/main/tools/convert_datasets/mapillary2cityscape.py",
        MAPILLARY_OPENSEG,
    ),
    "narrow": MapillaryTable(
        "narrow",
        "HRDA/MIC tools/convert_datasets/mapillary.py (v1.2 ids 66 -> 19; v2.0 read by the same names): "
        "https://github.com/lhoyer/HRDA/blob/master/tools/convert_datasets/mapillary.py",
        MAPILLARY_NARROW,
    ),
    "definitions": MapillaryTable(
        "definitions",
        "this project's reading of the Cityscapes class definitions (training/label_maps.py); matches no "
        "published converter",
        MAPILLARY_CITYSCAPES_DEFINITIONS,
        _CITYSCAPES_PREFIXES,
    ),
}
# The table behind MFuser's README layout (see MAPILLARY_OPENSEG).
DEFAULT_MAPILLARY_TABLE = "openseg"


def mapillary_table(mapping: str = DEFAULT_MAPILLARY_TABLE) -> MapillaryTable:
    """The table named ``mapping``.

    Raises:
        KeyError: unknown ``mapping`` (the message lists the valid ones).
    """
    if mapping not in MAPILLARY_TABLES:
        msg = f"unknown Mapillary mapping {mapping!r}; valid: {', '.join(MAPILLARY_TABLES)}"
        raise KeyError(msg)
    return MAPILLARY_TABLES[mapping]


def mapillary_name_to_train_id(name: str, mapping: str = DEFAULT_MAPILLARY_TABLE) -> int:
    """Train id (0..18) of a Mapillary label name under table ``mapping``, or 255 when it has no counterpart."""
    return mapillary_table(mapping).train_id(name)


def mapillary_lut(names: Sequence[str], mapping: str = DEFAULT_MAPILLARY_TABLE) -> np.ndarray:
    """256-entry uint8 lookup table from Mapillary label ids (the index in ``names``) to train ids."""
    table = mapillary_table(mapping)
    return build_lut({i: table.train_id(n) for i, n in enumerate(names)})


def build_lut(table: Mapping[int, int], size: int = 256, default: int = IGNORE_INDEX) -> np.ndarray:
    """Dense uint8 lookup table from a sparse ``{native id: train id}`` map.

    Args:
        table: native id -> train id.
        size: number of native ids covered (65536 for 16-bit labels).
        default: value for ids not in ``table``.
    """
    lut = np.full(size, default, dtype=np.uint8)
    for src, dst in table.items():
        lut[src] = dst
    return lut
