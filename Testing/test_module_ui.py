"""Static checks of the Slicer module (MRtoCTSynthesis.py, with the logic and self-test bodies in
MRtoCTSynthesisLib/slicer/logic.py and selftest.py), its .ui file and its resources, without Slicer.

The module cannot be imported here (it needs Slicer's ``qt``, ``ctk`` and ``slicer``), so it is read with
``ast``. The checks make sure that every ``self.ui.<name>`` exists in the .ui file, that each
parameter-node field is bound to exactly one widget of a type Slicer's ``connectGui`` can connect to it,
and that the names the module uses from ``slicer_bridge``, ``mrml_glue`` and its own logic exist.
"""

import ast
import json
import re
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from MRtoCTSynthesisLib.slicer import bridge as slicer_bridge
from MRtoCTSynthesisLib.slicer import downloads as model_downloads
from MRtoCTSynthesisLib.slicer import mrml as mrml_glue

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "MRtoCTSynthesis"
MODULE_PY = MODULE_DIR / "MRtoCTSynthesis.py"
LOGIC_PY = MODULE_DIR / "MRtoCTSynthesisLib" / "slicer" / "logic.py"
SELFTEST_PY = MODULE_DIR / "MRtoCTSynthesisLib" / "slicer" / "selftest.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "MRtoCTSynthesis.ui"


# ------------------------------------------------------------------------------------------ parsing
def _parse(path):
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


@pytest.fixture(scope="module")
def tree():
    return _parse(MODULE_PY)


@pytest.fixture(scope="module")
def logic_tree():
    return _parse(LOGIC_PY)


@pytest.fixture(scope="module")
def selftest_tree():
    return _parse(SELFTEST_PY)


@pytest.fixture(scope="module")
def ui():
    return ET.parse(UI_FILE).getroot()


def _classes(tree):
    return {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}


def _widgets(ui):
    """{name: (class, {property: value-element})} of every widget in the .ui file."""
    out = {}
    for w in ui.iter("widget"):
        props = {p.get("name"): p for p in w.findall("property")}
        out[w.get("name")] = (w.get("class"), props)
    return out


def _text(prop):
    child = list(prop)[0]
    if child.tag == "stringlist":
        return [s.text or "" for s in child.findall("string")]
    return child.text


def _parameter_widgets(ui):
    bound = {}
    for name, (cls, props) in _widgets(ui).items():
        if "SlicerParameterName" in props:
            prop = props["SlicerParameterName"]
            assert prop.get("stdset") == "0", f"{name}: SlicerParameterName must be a dynamic property (stdset=0)"
            param = _text(prop)
            assert param not in bound, f"parameter {param!r} is bound to both {bound[param][0]} and {name}"
            bound[param] = (name, cls, props)
    return bound


def _parameter_fields(tree):
    """{field: (annotation source, default node or None)} of the @parameterNodeWrapper class."""
    for cls in _classes(tree).values():
        decorators = [ast.unparse(d) for d in cls.decorator_list]
        if "parameterNodeWrapper" in decorators:
            return {stmt.target.id: (ast.unparse(stmt.annotation), stmt.value)
                    for stmt in cls.body if isinstance(stmt, ast.AnnAssign)}
    raise AssertionError("no @parameterNodeWrapper class in the module")


def _attribute_uses(tree, base: str):
    """Names used as ``<base>.<name>`` (e.g. ``self.ui.applyButton`` for base ``self.ui``)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and ast.unparse(node.value) == base:
            names.add(node.attr)
    return names


# ---------------------------------------------------------------------------------------- the tests
def _bases(tree):
    return {name: [ast.unparse(b) for b in c.bases] for name, c in _classes(tree).items()}


def _class_attributes(cls):
    """{name: value source} of the plain assignments in a class body."""
    return {ast.unparse(t): ast.unparse(stmt.value) for stmt in cls.body if isinstance(stmt, ast.Assign)
            for t in stmt.targets}


def test_module_parses_and_defines_the_four_classes(tree, logic_tree, selftest_tree):
    bases = _bases(tree)
    assert "ScriptedLoadableModule" in bases["MRtoCTSynthesis"]
    assert "ScriptedLoadableModuleWidget" in bases["MRtoCTSynthesisWidget"]
    # Logic and Test keep their names in the module file (Slicer looks them up by name) and subclass the bodies
    # in the Lib package, which derive from Slicer's classes; the Lib modules are imported as modules, so that
    # unittest does not collect the self-test base as a TestCase of the module file
    imported = {(node.module, a.name, a.asname) for node in tree.body if isinstance(node, ast.ImportFrom)
                for a in node.names}
    assert ("MRtoCTSynthesisLib.slicer", "logic", "engine_logic") in imported
    assert ("MRtoCTSynthesisLib.slicer", "selftest", "module_selftest") in imported
    assert bases["MRtoCTSynthesisLogic"] == ["engine_logic.EngineLogic"]
    assert "ScriptedLoadableModuleLogic" in _bases(logic_tree)["EngineLogic"]
    assert bases["MRtoCTSynthesisTest"] == ["module_selftest.SelfTest"]
    assert "ScriptedLoadableModuleTest" in _bases(selftest_tree)["SelfTest"]
    # what the Lib bases leave to the module file
    assert _class_attributes(_classes(tree)["MRtoCTSynthesisLogic"]) == {
        "parameterNodeClass": "MRtoCTSynthesisParameterNode"}
    assert _class_attributes(_classes(tree)["MRtoCTSynthesisTest"]) == {
        "logicClass": "MRtoCTSynthesisLogic", "registerSampleData": "staticmethod(registerSampleData)"}
    # the Lib side needs nothing from the module file
    for lib in (logic_tree, selftest_tree):
        modules = {n.module for n in ast.walk(lib) if isinstance(n, ast.ImportFrom)}
        modules |= {a.name for n in ast.walk(lib) if isinstance(n, ast.Import) for a in n.names}
        assert "MRtoCTSynthesis" not in modules and not _attribute_uses(lib, "self.ui")


def test_module_description(tree):
    init = next(f for f in _classes(tree)["MRtoCTSynthesis"].body
                if isinstance(f, ast.FunctionDef) and f.name == "__init__")
    assigned = {}
    for stmt in ast.walk(init):
        if isinstance(stmt, ast.Assign) and isinstance(stmt.targets[0], ast.Attribute):
            target = ast.unparse(stmt.targets[0])
            try:
                assigned[target] = ast.literal_eval(stmt.value)
            except ValueError:
                pass
    assert assigned["self.parent.title"] == "MR to CT Synthesis"
    assert assigned["self.parent.categories"] == ["Image Synthesis"]
    assert assigned["self.parent.contributors"]
    help_text = assigned["self.parent.helpText"]
    assert "mrtoct" in help_text and "Register MRI to CT" in help_text and "Cancel" in help_text
    ack = assigned["self.parent.acknowledgementText"]
    for needle in ("Lyu", "Conversion between CT and MRI images using diffusion and score-matching models",
                   "DDMM-Synth", "Butala", "Unsupervised medical image translation with adversarial diffusion models",
                   "IEEE Transactions on\nMedical Imaging", "Sharma",
                   "Image modality translation between MRI and CT using diffusion and score-matching"):
        assert needle.replace("\n", " ") in ack.replace("\n", " "), needle


def test_every_ui_reference_exists_in_the_ui_file(tree, ui):
    widgets = _widgets(ui)
    used = _attribute_uses(tree, "self.ui")
    assert used, "the module does not use self.ui at all?"
    missing = sorted(used - set(widgets))
    assert not missing, f"self.ui.<name> used in the module but not in the .ui file: {missing}"
    names = [w.get("name") for w in ui.iter("widget")]
    assert len(names) == len(set(names)), "duplicate widget names in the .ui file"


def test_parameter_fields_and_ui_bindings_match(tree, ui):
    fields = _parameter_fields(tree)
    bound = _parameter_widgets(ui)
    assert set(fields) == set(bound), (f"fields without widget: {sorted(set(fields) - set(bound))}; "
                                       f"widgets without field: {sorted(set(bound) - set(fields))}")
    expected = {"inputMRI", "referenceCT", "method", "sampler", "steps", "samples", "projections", "noiseSigma",
                "seed", "device", "modelPath", "outputSCT", "outputStd", "registeredMRI"}
    assert expected <= set(fields)


def _connector_widget_class(annotation: str) -> str:
    """The widget class Slicer's connectGui (plus the module's ctkComboBox connector) needs for a field type."""
    base = re.sub(r"^Annotated\[(.*?),.*\]$", r"\1", annotation).strip()
    if base.startswith(("vtkMRML", "Union[vtkMRML", "Optional[Union[vtkMRML")):
        return "qMRMLNodeComboBox"
    if base in ("pathlib.Path", "Path"):
        return "ctkPathLineEdit"
    if base == "bool":
        return "QCheckBox"
    if base == "int":
        return "QSpinBox"
    if base == "float":
        return "QDoubleSpinBox"
    if base == "str":  # a Choice: Slicer's combo box connector; a plain str: the module's run-time-filled combo
        return "QComboBox" if "Choice(" in annotation else "QComboBox|ctkComboBox"
    raise AssertionError(f"no known widget for field type {annotation}")


def _dynamic_choice_parameters(tree):
    for node in tree.body:
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "DYNAMIC_CHOICE_PARAMETERS":
            return ast.literal_eval(node.value)
    raise AssertionError("the module defines no DYNAMIC_CHOICE_PARAMETERS")


def test_widget_types_fit_the_field_types(tree, ui):
    fields = _parameter_fields(tree)
    bound = _parameter_widgets(ui)
    for field, (annotation, _) in fields.items():
        name, cls, props = bound[field]
        assert cls in _connector_widget_class(annotation).split("|"), f"{field}: {annotation} bound to {cls} {name}"
        if annotation == "str":
            assert field in _dynamic_choice_parameters(tree), f"{field}: a plain str combo must be filled by the module"
        if cls == "qMRMLNodeComboBox":
            for node_type in re.findall(r"vtkMRML\w+", annotation):
                assert node_type in _text(props["nodeTypes"]), f"{name}: nodeTypes must include {node_type}"
    # the run-time-filled combo boxes get an instance of the module's connector, which is NOT registered
    # globally (from Slicer 5.8 on, Slicer's own combo box connector would win and raise; see
    # Testing/test_module_in_slicer_releases.py, which runs the binding against each release's sources)
    connector = _classes(tree)["DynamicChoiceComboBoxConnector"]
    assert "parameterNodeGuiConnector" not in [ast.unparse(d) for d in connector.decorator_list]
    assert "ctk.ctkComboBox" in ast.unparse(connector)


def test_numeric_defaults_and_ranges_agree(tree, ui):
    fields = _parameter_fields(tree)
    bound = _parameter_widgets(ui)
    for field, (annotation, default) in fields.items():
        m = re.search(r"WithinRange\(([^,]+),\s*([^)]+)\)", annotation)
        if not m:
            continue
        lo, hi = (ast.literal_eval(v.strip()) if "**" not in v else eval(v, {}) for v in m.groups())  # noqa: S307
        value = ast.literal_eval(default)
        assert lo <= value <= hi, f"{field}: default {value} outside [{lo}, {hi}]"
        _, _, props = bound[field]
        ui_lo, ui_hi = float(_text(props["minimum"])), float(_text(props["maximum"]))
        assert (ui_lo, ui_hi) == (float(lo), float(hi)), f"{field}: .ui range {(ui_lo, ui_hi)} != {(lo, hi)}"
        if "value" in props:
            assert float(_text(props["value"])) == float(value), f"{field}: .ui value differs from the default"


def test_node_selectors_get_the_scene(ui):
    connections = {(c.findtext("sender"), c.findtext("signal"), c.findtext("receiver"), c.findtext("slot"))
                   for c in ui.iter("connection")}
    root = ui.find("widget")
    assert root.get("class") == "qMRMLWidget"
    for name, (cls, _) in _widgets(ui).items():
        if cls == "qMRMLNodeComboBox":
            assert (root.get("name"), "mrmlSceneChanged(vtkMRMLScene*)", name,
                    "setMRMLScene(vtkMRMLScene*)") in connections, name
    custom = {c.findtext("class") for c in ui.iter("customwidget")}
    used = {cls for cls, _ in _widgets(ui).values()}
    assert {c for c in used if c.startswith(("ctk", "qMRML"))} <= custom


def test_names_used_from_the_bridge_glue_and_logic_exist(tree, logic_tree, selftest_tree):
    for source in (tree, logic_tree, selftest_tree):
        for module, name in ((slicer_bridge, "slicer_bridge"), (mrml_glue, "mrml_glue"),
                             (model_downloads, "model_downloads")):
            missing = sorted(a for a in _attribute_uses(source, name) if not hasattr(module, a))
            assert not missing, f"{name} has no {missing}"
    logic_methods = {f.name for cls in (_classes(tree)["MRtoCTSynthesisLogic"], _classes(logic_tree)["EngineLogic"])
                     for f in cls.body if isinstance(f, ast.FunctionDef)}
    logic_methods |= {"getParameterNode", "ctWindow"}  # ctWindow: an attribute set in __init__
    used = (_attribute_uses(tree, "self.logic") | _attribute_uses(tree, "logic")
            | _attribute_uses(selftest_tree, "logic"))
    assert not sorted(used - logic_methods), f"logic methods used but not defined: {sorted(used - logic_methods)}"
    widget_methods = {f.name for f in _classes(tree)["MRtoCTSynthesisWidget"].body if isinstance(f, ast.FunctionDef)}
    widget_self = {n.attr for n in ast.walk(_classes(tree)["MRtoCTSynthesisWidget"])
                   if isinstance(n, ast.Attribute) and ast.unparse(n.value) == "self"
                   and n.attr.startswith(("on", "_on", "_update"))}
    assert widget_self <= widget_methods | {"_updatingWidgets"}, sorted(widget_self - widget_methods)


def test_the_test_class_really_tests(selftest_tree):
    test_class = _classes(selftest_tree)["SelfTest"]
    methods = {f.name: f for f in test_class.body if isinstance(f, ast.FunctionDef)}
    run_calls = {n.func.attr for n in ast.walk(methods["runTest"])
                 if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
    tests = {name for name in methods if name.startswith("test_")}
    assert {"test_registration", "test_synthesis_with_metrics", "test_cancel"} <= tests
    assert tests <= run_calls, f"runTest does not run {sorted(tests - run_calls)}"
    for name in tests:
        src = ast.unparse(methods[name])
        assert "assert" in src, f"{name} asserts nothing"


def test_resources_exist_and_cmake_lists_them():
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule" in cmake and "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in cmake
    assert "${MODULE_NAME}Lib/*.py" in cmake and "${MODULE_NAME}Lib/assets/*" in cmake
    for rel in re.findall(r"^\s*(Resources/\S+)\s*$", cmake, flags=re.M):
        path = MODULE_DIR / rel.replace("${MODULE_NAME}", "MRtoCTSynthesis")
        assert path.is_file(), f"CMakeLists.txt lists {rel}, which does not exist"
    for rel in ("Resources/Icons/MRtoCTSynthesis.png", "Resources/UI/MRtoCTSynthesis.ui",
                "Resources/requirements.txt", "Resources/models.json"):
        assert re.search(re.escape(rel.replace("MRtoCTSynthesis.", "${MODULE_NAME}.")) + "|" + re.escape(rel),
                         cmake), rel


def test_icons_are_128_px_png_and_the_extension_icon_matches():
    module_icon = MODULE_DIR / "Resources" / "Icons" / "MRtoCTSynthesis.png"
    extension_icon = REPO / "Resources" / "Icons" / "MRtoCTSynthesis.png"
    data = module_icon.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (128, 128)
    assert extension_icon.read_bytes() == data


def test_extensions_index_catalog_entry():
    entry = json.loads((REPO / "Resources" / "MRtoCTSynthesis.json").read_text())
    allowed = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
               "dicom_support_rule", "build_subdirectory", "enabled",
               "tier"}  # schema v1.0.2, additionalProperties false
    assert {"$schema", "category", "scm_url"} <= set(entry) <= allowed
    assert re.search(r"slicer-extension-catalog-entry-schema-v1\.0\.\d+\.json#$", entry["$schema"])
    assert entry["scm_type"] in ("git", "local") and 1 <= entry["tier"] <= 5
    top = (REPO / "CMakeLists.txt").read_text()
    category = re.search(r'set\(EXTENSION_CATEGORY "([^"]*)"\)', top).group(1)
    depends = re.search(r'set\(EXTENSION_DEPENDS "([^"]*)"\)', top)
    homepage = re.search(r'set\(EXTENSION_HOMEPAGE "([^"]*)"\)', top).group(1)
    assert entry["category"] == category
    assert entry["build_dependencies"] == ([d for d in depends.group(1).split() if d != "NA"] if depends else [])
    assert entry["scm_url"].rstrip("/") == homepage.rstrip("/")
    # no placeholder addresses: every EXTENSION_* URL field is a real https address or says it is not published
    for field in ("HOMEPAGE", "ICONURL", "SCREENSHOTURLS"):
        value = re.search(rf'set\(EXTENSION_{field} "([^"]*)"\)', top).group(1)
        assert value == "not published yet" or (value.startswith("https://") and "example" not in value), field
