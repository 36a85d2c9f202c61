"""ROI names as other clinics write them (TG-263 names, their reverse-order forms and common deviations,
odd whitespace and Unicode) -> the built-in catalogue; planning structures, sub-structures, second
contours and organs outside the catalogue stay unmapped ("unmapped", never "ambiguous" or a guess)."""
import pytest

from nnunet_oar import organs
from nnunet_oar.conversion.names import NameMap


@pytest.fixture(autouse=True)
def builtin_catalogue():
    """The table is about the built-in catalogue: a user catalogue (``$nnunet_oar_catalogue``) may add
    organs (``OpticChiasm``) that the table expects unmapped."""
    if any(o.organ_set not in ("visceral", "openkbp") for o in organs.ORGANS.values()):
        pytest.skip("a user catalogue is registered")


MAPPED = [
    # spinal cord, brainstem
    ("SpinalCord", "spinal_cord"), ("Spinal Cord", "spinal_cord"), ("Cord", "spinal_cord"),
    ("SPINAL_CORD", "spinal_cord"), ("Spinal-Cord", "spinal_cord"), ("SPINALCORD", "spinal_cord"),
    ("BrainStem", "brainstem"), ("Brain_Stem", "brainstem"), ("Brainstem", "brainstem"),
    ("BRAINSTEM", "brainstem"), ("Brain Stem ", "brainstem"),
    # parotids, every way of writing the side
    ("Parotid_L", "parotid_left"), ("Lt Parotid", "parotid_left"), ("L_Parotid", "parotid_left"),
    ("Parotid Lt", "parotid_left"), ("LEFT PAROTID", "parotid_left"), ("Parotid_Lt", "parotid_left"),
    ("Parotid (L)", "parotid_left"), ("LtParotid", "parotid_left"), ("LParotid", "parotid_left"),
    ("ParotidL", "parotid_left"), ("LeftParotid", "parotid_left"), ("Parotid sin", "parotid_left"),
    ("Parotid_Sx", "parotid_left"), ("Parotid_Rt", "parotid_right"), ("Parotid Dx", "parotid_right"),
    ("Right Parotid Gland", "parotid_right"), ("Glnd_Parotid_R", "parotid_right"), ("parotid r", "parotid_right"),
    # whitespace and Unicode a planning system or an export leaves in a name
    ("Parotid_L\u00a0", "parotid_left"), ("Parotid\tL", "parotid_left"), ("  Parotid_L  ", "parotid_left"),
    ("Parotid_L\u200b", "parotid_left"), ("\ufeffParotid_L", "parotid_left"), ("Parotid\u2013L", "parotid_left"),
    ("\uff30\uff41\uff52\uff4f\uff54\uff49\uff44\uff3f\uff2c", "parotid_left"),      # full-width Parotid_L
    # head and neck
    ("Esophagus", "esophagus"), ("Oesophagus", "esophagus"), ("OESOPHAGUS", "esophagus"),
    ("Larynx", "larynx"), ("LARYNX", "larynx"),
    ("Mandible", "mandible"), ("Bone_Mandible", "mandible"), ("Mandible_Bone", "mandible"),
    # abdomen and thorax (TG-263 primary and reverse-order names among them)
    ("Kidney_R", "kidney_right"), ("Rt Kidney", "kidney_right"), ("R_Kidney", "kidney_right"),
    ("KIDNEY_RT", "kidney_right"), ("Kidney_Dx", "kidney_right"),
    ("Liver", "liver"), ("LIVER", "liver"), ("Spleen", "spleen"), ("Pancreas", "pancreas"),
    ("Gallbladder", "gallbladder"), ("Gall Bladder", "gallbladder"),
    ("Bladder", "urinary_bladder"), ("Urinary Bladder", "urinary_bladder"),
    ("A_Aorta", "aorta"), ("Aorta_A", "aorta"), ("Aorta", "aorta"), ("Trachea", "trachea"),
    ("Lung_L", "lung_left"), ("L_Lung", "lung_left"), ("Lung_R", "lung_right"), ("Sternum", "sternum"),
    ("Glnd_Thyroid", "thyroid_gland"), ("Thyroid_Glnd", "thyroid_gland"), ("Thyroid", "thyroid_gland"),
    ("VB_L1", "vertebra_L1"), ("L1_VB", "vertebra_L1"), ("Vertebra L1", "vertebra_L1"),
    ("Glnd_Adrenal_L", "adrenal_gland_left"), ("L_Adrenal_Glnd", "adrenal_gland_left"),
    ("Adrenal Gland R", "adrenal_gland_right"), ("Musc_Psoas_L", "psoas_major_left"),
    ("Psoas Major R", "psoas_major_right"), ("Musc_RectusAbdominis_R", "rectus_abdominis_right"),
    # abbreviations and TotalSegmentator's name, found in clinics' structure lists
    ("B Stem", "brainstem"), ("bstem", "brainstem"), ("BStem", "brainstem"), ("SpCord", "spinal_cord"),
    ("Spine cord", "spinal_cord"), ("Esoph", "esophagus"), ("Oesoph", "esophagus"),
    ("vertebrae_L1", "vertebra_L1"), ("Vertebral_Body_L1", "vertebra_L1"),
    # sides in Latin, German, French, Italian, Spanish; "OAR" as a filler word; any bracket or separator
    ("Parotid Dext", "parotid_right"), ("Parotid dexter", "parotid_right"),
    ("Parotid links", "parotid_left"), ("Parotid_rechts", "parotid_right"), ("Parotid gauche", "parotid_left"),
    ("Parotid droite", "parotid_right"), ("Parotid sinistra", "parotid_left"), ("Parotid destra", "parotid_right"),
    ("Parotid izq", "parotid_left"), ("Parotid_Der", "parotid_right"), ("Kidney izquierdo", "kidney_left"),
    ("larynx (OAR)", "larynx"), ("OAR_Bladder", "urinary_bladder"), ("Parotid [L]", "parotid_left"),
    ("Parotid {R}", "parotid_right"), ("Parotid<L>", "parotid_left"), ("Parotid: L", "parotid_left"),
    ("Parotid;R", "parotid_right"), ("Parotid | L", "parotid_left"), ("Parotid\u00b7L", "parotid_left"),
]

UNMAPPED = [
    # planning structures: PRVs, expansions, optimisation and avoidance structures, TG-263's z/_ prefixes,
    # ~ (partial) and ^ (custom note), "not segmented", a second or an old contour, auto-contours
    "Parotid_L_PRV", "PRV_Parotid_L", "Parotid_L_opt", "Parotid_L-PTV", "Parotid_L\u2212PTV", "Parotid_L_avoid",
    "z_Parotid_L", "zParotid_L", "_Parotid_L", "_SpinalCord", "Parotid_L_NS", "NS_Parotid_L", "Parotid_L~",
    "Brainstem~", "Parotid_L^Deep", "Parotid_L+", "Parotid_L+3mm", "Parotid_L*", "Parotid_L_old", "Parotid_L_AI",
    "Parotid_L_1", "Parotid L 2", "Parotid_L2", "Parotid (2) L", "Liver (1)",
    "PRV_SpinalCord", "SpinalCord_PRV05", "SpinalCord+5mm", "Cord_5mm", "Cord PRV", "CordPRV", "SpinalCord_05",
    "Cord+", "SpinalCord+", "+Cord", "Brainstem+", "Esophagus+",
    "Brainstem_03", "Brainstem_PRV", "BrainStem_3mm", "Mandible-PTV", "Mandible_PRV", "Larynx-PTV",
    "Liver-GTV", "Liver minus GTV", "Liver_PRV", "Kidney_R-GTV", "Bladder-CTV", "Lungs-GTV", "Esophagus_NS",
    # no side, both sides, or a side that cannot be read
    "Parotid", "Parotids", "Parotid L R", "Parotid L/R", "Parotid_Ipsi", "Parotid_Contra",
    "Kidney", "Kidneys", "Lung", "Lungs", "Psoas",
    # a part of an organ, or another organ that shares a word
    "Esophagus_Cerv", "Esophagus_S", "Larynx_Glottic", "Larynx_SG", "Glottis", "Brainstem_Core", "Brainstem_Surf",
    "SpinalCord_Cerv", "Kidney_Cortex_L", "Kidney_Hilum_R", "Lung_LUL", "Bladder_Wall", "A_Aorta_Asc",
    "Mandible_L", "Thyroid_L", "Liver_R", "Cord_L", "VocalCords", "Spinal Canal", "CaudaEquina", "Brain", "Pons",
    "Rectus_L", "Rectum", "L1", "VB_L1_L2", "Jaw", "Esophagus_Cerv_Esoph", "B", "Stem",
    # one-letter or short words that are sides only in some clinics: a deep lobe, a re-contour
    "Parotid_D", "Parotid_G", "Lung_D", "Parotid_re", "Parotid_li",
    # two sides in two languages, and unions
    "Parotid links rechts", "Parotid gauche Rt", "Parotid L&R", "Parotid_L+R", "Lung_Total",
    # head-and-neck organs the built-in catalogue does not hold
    "Glnd_Submand_L", "Lens_L", "Eye_L", "OpticNrv_L", "Chiasm", "OpticChiasm", "Cochlea_L", "Musc_Constrict",
    "A_Carotid_L", "Brachial_Plex_L",
    # whole-body and target structures, and names that are all filler or side
    "Ring", "Body", "BODY", "External", "Skin", "Couch", "PTV70", "CTV_High", "GTVp",
    "", "_", "L", "A", "Bone", "Gland",
]


@pytest.fixture(scope="module")
def name_map():
    return NameMap()


@pytest.mark.parametrize("roi, organ", MAPPED)
def test_clinic_names_map_to_their_organ(name_map, roi, organ):
    assert name_map(roi) == (organ, "rule")


@pytest.mark.parametrize("roi", UNMAPPED)
def test_planning_and_other_structures_stay_unmapped(name_map, roi):
    assert name_map(roi) == (None, "unmapped")


ORGAN_NAMES = ["SpinalCord", "Brainstem", "Parotid_L", "Esophagus", "Larynx", "Bone_Mandible", "Kidney_R",
               "Liver", "Lung_L"]
DECORATIONS = ["{}_PRV", "{}_PRV05", "{}+5mm", "{}+", "{}_opt", "{}-PTV", "{}_avoid", "{}_NS", "{}~", "{}^Deep",
               "{}_1", "{} 2", "{}_old", "z_{}", "z{}", "_{}", "PRV_{}", "NS_{}", "+{}"]


@pytest.mark.parametrize("decoration", DECORATIONS)
@pytest.mark.parametrize("organ_name", ORGAN_NAMES)
def test_every_organ_name_decorated_as_a_planning_structure_stays_unmapped(name_map, organ_name, decoration):
    assert name_map(organ_name)[0] is not None             # the bare name maps ...
    assert name_map(decoration.format(organ_name)) == (None, "unmapped")     # ... its planning structure not
