"""Distill: launch a run of `xtok distill` in the background, follow its curves live, stop, resume, compare runs."""

import inspect
import json

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from xtok_app import caches, runs, state
from xtok_app.render import md_text
from xtok_core import XtokError
from xtok_core.distill import DistillConfig
from xtok_core.teacher_cache import build_teacher_cache

LOSS_NAMES = {"pkl": "P-KL", "hkl": "H-KL", "gold": "GOLD", "uld": "ULD", "ce": "CE only (no teacher)"}
REFRESH_S = 2.0
DEFAULTS = DistillConfig()  # the form's defaults are the CLI's
F = runs.FIELD_PREFIX  # a widget keyed F + <DistillConfig field> holds that field's value (runs.widget_config)

st.title("Distill")
ss = st.session_state
student, teacher = state.current_pair()
state.pair_caption(student, teacher)

recommended = None
try:
    w = state.projection_with_progress(student, teacher)
    report = state.audit(student, teacher, w)
    recommended = {"P-KL": "pkl", "H-KL": "hkl"}.get(report.recommendation)
except XtokError as e:
    st.warning(md_text(f"No audit recommendation for this pair: {e}"))


def model_field(label: str, options: list, default: str, key: str) -> str:
    """A model choice: named real models and `tiny:` ones; a local directory only on a server that allows it."""
    extra = ["local model directory"] if state.allow_local() else []
    kind = st.selectbox(label, options + extra, index=options.index(default), key=f"{key}_kind",
                        help="Named models are real (`xtok models`); `tiny:<tokenizer>` is a small Llama-style model "
                             "sized to that tokenizer. Local model directories need a server started with "
                             f"{state.ALLOW_LOCAL_ENV}=1.")
    if not extra:
        return kind
    # (in a form nothing reruns before submit, so the directory field is always there)
    path = st.text_input(f"{label} model directory (when “local model directory” is picked)", key=f"{key}_dir",
                         placeholder="/models/my-model", max_chars=1000).strip()
    return path if kind == "local model directory" else kind


all_runs = runs.list_runs()
complete_caches = {c.name: c for c in caches.list_caches() if c.complete}
# Stays open once the user worked in it (a rerun from the checkbox below would fold it again).
with st.expander("New run", expanded=not all_runs or ss.get("new_run_open", False), icon=":material/add:"):
    # Outside the form: ticking it reruns the page, so the second teacher's fields follow it.
    second = st.checkbox("Add a second teacher", key="f_second", on_change=lambda: ss.update(new_run_open=True))
    with st.form("new_run"):
        c1, c2 = st.columns(2)
        named = state.named_models()
        with c1:
            student_model = model_field("Student", [f"tiny:{student.name}"] + named, f"tiny:{student.name}", "f_student")
        with c2:  # the default is the real-teacher demo (DistillConfig's default teacher)
            t_options = named + [f"tiny:{teacher.name}"]
            teacher_model = model_field("Teacher", t_options, DEFAULTS.teachers[0] if DEFAULTS.teachers[0] in t_options
                                        else t_options[0], "f_teacher")
        cache_names = ["", *complete_caches]
        cache_pick = st.selectbox(
            "Train from a cache", cache_names, key="f_cache",
            format_func=lambda n: (f"{n} · {complete_caches[n].setting('teacher')} · K = {complete_caches[n].setting('top_k')}"
                                   if n else "none: run the teacher at every step"),
            help="A teacher cache (built below) holds the teacher's top-K distributions over the generated corpus; "
                 "the run reads them instead of loading the teacher, which it replaces.")
        c1, c2, c3 = st.columns(3)
        losses = list(LOSS_NAMES)
        # DistillConfig's `auto` is the audit's recommendation; the page shows which one it is
        c1.selectbox("Loss" + (f" (the audit recommends {LOSS_NAMES[recommended]})" if recommended else ""), losses,
                     index=losses.index(recommended) if recommended else 0, format_func=LOSS_NAMES.get, key=F + "loss")
        c2.number_input("Steps", 1, 1_000_000, DEFAULTS.steps, key=F + "steps")
        c3.number_input("Learning rate", 1e-6, 1.0, DEFAULTS.lr, format="%.0e", key=F + "lr")
        c1, c2, c3 = st.columns(3)
        c1.slider("On-policy ratio", 0.0, 1.0, DEFAULTS.on_policy_ratio, 0.05, key=F + "on_policy_ratio",
                  help="Share of each batch the student samples itself; the text is decoded and re-tokenized for the teacher.")
        dynamic = c2.checkbox("Dynamic KD/CE scaling", DEFAULTS.kd_weight is None, key="f_dynamic",
                              help="λ = sg(CE)/sg(KD) each step, so KD matches CE's size (the paper); off: the fixed weight.")
        kd_weight = c3.number_input("Fixed KD weight (when not dynamic)", 0.0, 100.0, 1.0, key="f_kdw")
        c1, c2 = st.columns([3, 1])
        second_model = c1.text_input("Second teacher: `tiny:<bundled tokenizer>`" +
                                     (" or a local model directory" if state.allow_local() else ""),
                                     "tiny:llama-3.2", key="f_second_model", disabled=not second, max_chars=1000)
        alpha = c2.slider("α of the second teacher", 0.0, 1.0, 0.3, 0.05, key="f_alpha", disabled=not second,
                          help="KD = (1 − α)·KD₁ + α·KD₂")
        with st.expander("More settings"):
            c1, c2, c3, c4, c5 = st.columns(5)
            c1.number_input("Batch size", 1, 1024, DEFAULTS.batch_size, key=F + "batch_size")
            c5.number_input("Generated corpus lines", 1, 10_000_000, DEFAULTS.corpus_lines, key=F + "corpus_lines",
                            help="The training texts (packed into examples); a teacher cache must hold the same corpus.")
            c2.number_input("Evaluate arithmetic every N steps (0: never)", 0, 100_000, DEFAULTS.eval_every,
                            key=F + "eval_every")
            c3.number_input("P-KL teacher top-k (0: every column)", 0, 1_000_000, DEFAULTS.teacher_topk or 0,
                            key=F + "teacher_topk",
                            help="P-KL with a fixed W: the KL over the teacher's k most likely columns of each batch plus "
                                 "one bucket for the rest (--teacher-topk). Not with a teacher cache, which holds its own top-K.")
            c4.checkbox("Trained demo teacher", DEFAULTS.train_demo_teacher, key=F + "train_demo_teacher",
                        help="A `tiny:` teacher is trained on the bundled corpus once (minutes on CPU) and cached "
                             "under the runs directory. Off: random weights, for a quick smoke run.")
        submitted = st.form_submit_button("Launch run", type="primary")

if submitted:
    fields = runs.widget_config({k: ss[k] for k in ss if str(k).startswith(F)})
    loss = fields["loss"]
    second_model = second_model.strip()
    teachers = [] if loss == "ce" else [teacher_model] + ([second_model] if second and second_model else [])
    cache = complete_caches.get(cache_pick) if loss != "ce" else None
    if cache is not None:  # the cache stands in for the (first) teacher
        teachers[0] = str(cache.setting("teacher"))
    local = [m for m in [student_model, *teachers] if not state.model_spec_ok(m)]
    if not student_model or any(not t for t in teachers):
        st.error("A model directory is empty; type its path or pick another model.")
    elif cache is not None and len(teachers) > 1:
        st.error("A run from a teacher cache takes one teacher on this page; untick the second teacher, or give each "
                 "teacher its cache with xtok distill --teacher-cache DIR --teacher-cache DIR2.")
    elif local and not state.allow_local() and cache is None:
        st.error(md_text(f"refused model {local[0]!r}: this server runs only tiny:<bundled tokenizer> and named models; "
                         f"start it with {state.ALLOW_LOCAL_ENV}=1 to use local model directories"))
    else:
        try:  # the page writes a DistillConfig (the one schema of a run) and the CLI reads it
            cfg = DistillConfig(**fields, student=student_model, teachers=teachers,
                                alphas=[1 - alpha, alpha] if len(teachers) == 2 else None,
                                kd_weight=None if dynamic else float(kd_weight),
                                teacher_caches=[str(cache.path)] if cache is not None else None,
                                runs_dir=str(runs.runs_dir()))
        except XtokError as e:
            st.error(md_text(str(e)))
        else:
            label = f"{student_model}-{'+'.join(teachers) or 'ce'}-{loss}{'-cached' if cache else ''}".replace("tiny:", "")
            run = runs.launch_config(cfg, runs.new_run_dir(label))
            ss.selected_run = run.name
            st.success(f"Launched {run.name} (pid {run.pid}); it keeps running if you close the page.")


def _accuracy(row: dict):
    v = row.get("eval_accuracy")
    return float(v) if isinstance(v, (int, float)) else None


def _steps_done(r: runs.Run, m: list[dict]) -> int | None:
    """Steps completed (metric lines count steps from 0; the CLI says "stopped at step N" for N done)."""
    done = r.status.get("step")
    if isinstance(done, int):
        return done
    return int(m[-1]["step"]) + 1 if m and "step" in m[-1] else None


def _row(r: runs.Run) -> dict:
    m = r.metrics()
    last = m[-1] if m else {}
    acc = next((x for x in (_accuracy(row) for row in reversed(m)) if x is not None), None)
    teachers = r.setting("teachers") or []
    # None, never "", in numeric columns: a mixed column breaks Arrow's conversion (ArrowTypeError)
    return {"run": r.name, "state": r.state, "steps done": _steps_done(r, m), "loss": last.get("loss"),
            "accuracy": acc, "loss fn": r.setting("loss") or "", "student": r.setting("student") or "",
            "teachers": ", ".join(teachers)}


def curves(frames: dict[str, pd.DataFrame], y: str, title: str, fmt: str = "") -> go.Figure:
    fig = go.Figure()
    for name, df in frames.items():
        if y in df and df[y].notna().any():
            d = df[df[y].notna()]
            fig.add_trace(go.Scatter(x=d["step"] + 1, y=d[y], mode="lines+markers" if len(d) < 60 else "lines", name=name))
    yaxis = dict(tickformat=fmt)
    if y == "accuracy":  # a share: the axis is 0 to 100 % whatever the points
        yaxis.update(range=[0, 1.02])
    fig.update_layout(height=300, title=title, margin=dict(l=10, r=10, t=40, b=10), xaxis_title="steps done",
                      yaxis=yaxis, legend=dict(orientation="h", y=-0.25))
    return fig


def metrics_frame(r: runs.Run) -> pd.DataFrame:
    df = pd.DataFrame(r.metrics())
    if not df.empty and "eval_accuracy" in df:
        df["accuracy"] = df["eval_accuracy"]
    return df


def _demo_teacher_first(r: runs.Run) -> bool:
    """True when the run's first minutes train the cached demo teacher (a tiny: teacher, not random)."""
    teachers = r.setting("teachers") or []
    random_teacher = ("--random-teacher" in (r.launch.get("command") or [])
                      or r.config.get("train_demo_teacher") is False)
    return not random_teacher and any(str(t).startswith("tiny:") for t in teachers)


def follow(run: runs.Run) -> None:
    df = metrics_frame(run)
    m = run.metrics()
    done, target = _steps_done(run, m), run.setting("steps")
    top = st.columns([2, 1, 1, 1])
    top[0].markdown(f"**{md_text(run.name)}** · state **{run.state}**" + (f" · pid {run.pid}" if run.running and run.pid else ""))
    top[1].metric("steps done", "—" if done is None else f"{done}" + (f" / {target}" if target else ""))
    top[2].metric("loss", f"{df['loss'].iloc[-1]:.4f}" if not df.empty and "loss" in df else "—")
    if run.running:
        if top[3].button("Stop run", type="primary", key="stop_run"):
            runs.stop_run(run)
            st.toast(f"Sent SIGTERM to {run.name}; it checkpoints and stops.")
    elif run.resumable:
        if top[3].button("Resume run", type="primary", key="resume_run",
                         help=f"xtok distill --resume {run.path}: continues from the last checkpoint"):
            runs.launch_run(["--no-progress"], run.path, resume=True)
            st.rerun(scope="app")
    if run.state == "failed" and run.error:
        st.error(md_text(run.error))
    elif run.state in ("ended", "failed") and not df.size:
        st.code(run.log_tail() or "(no output)", language=None)
    if df.empty:
        if run.running:
            st.caption("Waiting for the first step" + (" (the `tiny:` demo teacher is trained and cached first)…"
                                                        if _demo_teacher_first(run) else "…"))
            if run.log_tail(3):
                st.code(run.log_tail(3), language=None)
        else:
            st.caption("This run wrote no metrics.")
        return
    c1, c2 = st.columns(2)
    fig = go.Figure()
    for k in ("loss", "kd", "ce"):
        if k in df:
            fig.add_trace(go.Scatter(x=df["step"] + 1, y=df[k], mode="lines+markers" if len(df) < 60 else "lines", name=k))
    fig.update_layout(height=300, title="Training loss", margin=dict(l=10, r=10, t=40, b=10), xaxis_title="steps done",
                      legend=dict(orientation="h", y=-0.25))
    c1.plotly_chart(fig, key="live_loss")
    if "accuracy" in df and df["accuracy"].notna().any():
        c2.plotly_chart(curves({run.name: df}, "accuracy", "Held-out arithmetic accuracy", ".0%"), key="live_acc")
    else:
        c2.caption("Held-out arithmetic accuracy appears here at the run's first evaluation (--eval-every).")
    d1, d2, _ = st.columns([1, 1, 4])
    d1.download_button("Metrics · JSONL", "\n".join(json.dumps(r) for r in m) + "\n",
                       file_name=f"{run.name}.metrics.jsonl", mime="application/json", key="dl_jsonl", on_click="ignore")
    d2.download_button("Metrics · CSV", df.to_csv(index=False), file_name=f"{run.name}.metrics.csv", mime="text/csv",
                       key="dl_csv", on_click="ignore")


def runs_section(polling: bool) -> None:
    """The runs table, the followed run and the comparison: one fragment, so all three refresh while
    a run is live (every REFRESH_S seconds) and the rest of the page stays."""
    listed = runs.list_runs()
    live_now = any(r.running for r in listed)
    if polling and not live_now:
        st.rerun(scope="app")  # the last live run ended: redraw once and stop polling
    if not listed:
        st.info(f"No runs in {runs.runs_dir().resolve()} yet (set {runs.RUNS_ENV} to use another directory).")
        return
    st.dataframe(pd.DataFrame([_row(r) for r in listed]), hide_index=True, width="stretch",
                 column_config={"accuracy": st.column_config.NumberColumn(format="percent"),
                                "loss": st.column_config.NumberColumn(format="%.4f")})
    names = [r.name for r in listed]
    if ss.get("selected_run") not in names:
        ss.selected_run = names[0]
    st.selectbox("Follow run", names, key="selected_run")
    follow(runs.load_run(runs.runs_dir() / ss.selected_run))

    st.subheader("Compare runs")
    if not ss.get("overlay_chosen"):  # until the user picks, the newest three (a new run joins at once)
        ss.overlay = names[: min(3, len(names))]
    ss.overlay = [n for n in ss.get("overlay", []) if n in names]
    overlay = st.multiselect("Runs to overlay", names, key="overlay", on_change=lambda: ss.update(overlay_chosen=True))
    if overlay:
        frames = {n: metrics_frame(runs.load_run(runs.runs_dir() / n)) for n in overlay}
        frames = {n: df for n, df in frames.items() if not df.empty}
        c1, c2 = st.columns(2)
        c1.plotly_chart(curves(frames, "loss", "Training loss"), key="cmp_loss")
        if any("accuracy" in df and df["accuracy"].notna().any() for df in frames.values()):
            c2.plotly_chart(curves(frames, "accuracy", "Held-out arithmetic accuracy", ".0%"), key="cmp_acc")
        else:
            c2.caption("None of these runs has evaluated arithmetic accuracy yet.")


# ---------------------------------------------------------------- teacher caches
CACHE_DEFAULTS = {k: v.default for k, v in inspect.signature(build_teacher_cache).parameters.items()}


def cache_section(polling: bool) -> None:
    """The caches and their progress: a fragment that polls while one builds (the bar survives a reload:
    it reads the build's progress.json)."""
    listed = caches.list_caches()
    if polling and not any(c.building for c in listed):
        st.rerun(scope="app")  # a build ended: redraw once (the run form lists it) and stop polling
    if not listed:
        st.caption(f"No teacher caches in {caches.caches_dir().resolve()} yet.")
        return
    for c in listed:
        k, teacher_spec = c.setting("top_k"), c.setting("teacher")
        head = f"**{md_text(c.name)}** · {md_text(str(teacher_spec))} · K = {k} · state **{c.state}**"
        if c.state == "complete":
            bpt = c.bytes_per_token()
            st.markdown(head + f" · {c.manifest.get('n_examples', 0):,} examples"
                        + (f" · {bpt:.0f} bytes per teacher token" if bpt else ""))
        elif c.state == "building":
            st.markdown(head)
            st.progress(c.fraction, text=f"{c.done:,} / {c.total or '?'} examples · {caches.format_eta(c.eta_s())}")
        else:
            cols = st.columns([5, 1])
            cols[0].markdown(head + (f" · {c.done:,} / {c.total} examples kept" if c.total else ""))
            cols[0].error(md_text(c.error))
            if c.launch.get("command") and cols[1].button("Resume build", key=f"resume_cache_{c.name}",
                                                          help="Run the same command again: complete shards are kept"):
                caches.resume_cache(c)
                st.rerun(scope="app")


st.subheader("Teacher caches")
st.caption("Run the teacher once over the generated corpus and keep its top-K next-token distributions "
           "(`xtok teacher-cache`): runs then train from the cache, without loading the teacher, as fast as the "
           "student allows. Pick one under New run.")
with st.expander("Build a teacher cache", icon=":material/database:"):
    with st.form("new_cache"):
        c1, c2, c3, c4, c5 = st.columns([2, 1, 1, 1, 1])
        with c1:
            named = state.named_models()
            cache_options = named + [f"tiny:{teacher.name}"]
            cache_teacher = model_field("Model to cache", cache_options, cache_options[0], "c_teacher")
        top_k = c2.number_input("Top-K kept", 1, 1_000_000, CACHE_DEFAULTS["top_k"], key="c_top_k",
                                help="Teacher ids stored per position (6·K + 12 bytes per teacher token at fp16).")
        max_length = c3.number_input("Teacher tokens per example", 2, 100_000, CACHE_DEFAULTS["max_length"],
                                     key="c_max_length", help="At least the runs' sequence length (96 by default).")
        cache_batch = c4.number_input("Teacher batch size", 1, 1024, CACHE_DEFAULTS["batch_size"], key="c_batch")
        corpus_lines = c5.number_input("Corpus lines to cache", 1, 10_000_000, DEFAULTS.corpus_lines, key="c_corpus_lines",
                                       help="As the runs' (More settings): a run trains from a cache of its own corpus.")
        build = st.form_submit_button("Build cache")
if build:
    if not cache_teacher:
        st.error("The model directory is empty; type its path or pick another model.")
    elif not state.model_spec_ok(cache_teacher) and not state.allow_local():
        st.error(md_text(f"refused model {cache_teacher!r}: this server runs only tiny:<bundled tokenizer> and named "
                         f"models; start it with {state.ALLOW_LOCAL_ENV}=1 to use local model directories"))
    else:
        c = caches.launch_cache(cache_teacher, top_k=int(top_k), max_length=int(max_length), batch_size=int(cache_batch),
                                corpus_lines=int(corpus_lines))
        st.success(f"Building {c.name} (pid {c.launch['pid']}); it keeps going if you close the page.")
building = any(c.building for c in caches.list_caches())
st.fragment(cache_section, run_every=REFRESH_S if building else None)(building)

st.subheader("Runs")
polling = any(r.running for r in runs.list_runs())
st.fragment(runs_section, run_every=REFRESH_S if polling else None)(polling)
