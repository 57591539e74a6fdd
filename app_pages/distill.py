"""Distill: launch a run of `xtok distill` in the background, follow its curves live, stop it, compare runs."""

import json

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from xtok_app import runs, state
from xtok_core import XtokError

LOSS_NAMES = {"pkl": "P-KL", "hkl": "H-KL", "gold": "GOLD", "uld": "ULD", "ce": "CE only (no teacher)"}
REFRESH_S = 2.0

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
    st.warning(f"No audit recommendation for this pair: {e}")


def model_field(label: str, tok_name: str, key: str) -> str:
    kind = st.radio(label, (f"tiny:{tok_name}", "local model directory"), key=f"{key}_kind", horizontal=True,
                    help="`tiny:<tokenizer>` is a small Llama-style model sized to that tokenizer (the demo); a local "
                         "directory is any Hugging Face causal LM (no remote code).")
    # (in a form nothing reruns before submit, so the directory field is always there)
    path = st.text_input(f"{label} model directory (when “local model directory” is picked)", key=f"{key}_dir",
                         placeholder="/models/my-model").strip()
    return path if kind == "local model directory" else kind


all_runs = runs.list_runs()
with st.expander("New run", expanded=not all_runs, icon=":material/add:"), st.form("new_run"):
    c1, c2 = st.columns(2)
    with c1:
        student_model = model_field("Student", student.name, "f_student")
    with c2:
        teacher_model = model_field("Teacher", teacher.name, "f_teacher")
    c1, c2, c3 = st.columns(3)
    losses = list(LOSS_NAMES)
    loss = c1.selectbox("Loss" + (f" (the audit recommends {LOSS_NAMES[recommended]})" if recommended else ""), losses,
                        index=losses.index(recommended) if recommended else 0, format_func=LOSS_NAMES.get, key="f_loss")
    steps = c2.number_input("Steps", 1, 1_000_000, 200, key="f_steps")
    lr = c3.number_input("Learning rate", 1e-6, 1.0, 1e-3, format="%.0e", key="f_lr")
    c1, c2, c3 = st.columns(3)
    on_policy = c1.slider("On-policy ratio", 0.0, 1.0, 0.0, 0.05, key="f_onpolicy",
                          help="Share of each batch the student samples itself; the text is decoded and re-tokenized for the teacher.")
    dynamic = c2.checkbox("Dynamic KD/CE scaling", True, key="f_dynamic",
                          help="λ = sg(CE)/sg(KD) each step, so KD matches CE's size (the paper); off: the fixed weight.")
    kd_weight = c3.number_input("Fixed KD weight (when not dynamic)", 0.0, 100.0, 1.0, key="f_kdw")
    second = st.checkbox("Add a second teacher", key="f_second")
    c1, c2 = st.columns([3, 1])
    second_model = c1.text_input("Second teacher: `tiny:<bundled tokenizer>` or a local model directory",
                                 "tiny:llama-3.2", key="f_second_model")
    alpha = c2.slider("α of the second teacher", 0.0, 1.0, 0.3, 0.05, key="f_alpha",
                      help="KD = (1 − α)·KD₁ + α·KD₂")
    with st.expander("More settings"):
        c1, c2, c3 = st.columns(3)
        batch = c1.number_input("Batch size", 1, 1024, 8, key="f_batch")
        eval_every = c2.number_input("Evaluate arithmetic every N steps (0: never)", 0, 100_000, 50, key="f_eval")
        demo_teacher = c3.checkbox("Trained demo teacher", True, key="f_demo",
                                   help="A `tiny:` teacher is trained on the bundled corpus once (minutes on CPU) and cached "
                                        "under the runs directory. Off: random weights, for a quick smoke run.")
    submitted = st.form_submit_button("Launch run", type="primary")

if submitted:
    teachers = [] if loss == "ce" else [teacher_model] + ([second_model.strip()] if second and second_model.strip() else [])
    args = ["--student", student_model]
    for t in teachers:
        args += ["--teacher", t]
    if len(teachers) == 2:
        args += ["--alpha", f"{1 - alpha:g}", "--alpha", f"{alpha:g}"]
    args += ["--loss", loss, "--steps", int(steps), "--lr", f"{lr:g}", "--on-policy-ratio", f"{on_policy:g}",
             "--batch-size", int(batch), "--eval-every", int(eval_every)]
    if not dynamic:
        args += ["--kd-weight", f"{kd_weight:g}"]
    if not demo_teacher:
        args += ["--random-teacher"]
    args += ["--runs-dir", str(runs.runs_dir()), "--no-progress"]
    if not student_model or any(not t for t in teachers):
        st.error("A model directory is empty; type its path or pick the tiny model.")
    else:
        label = f"{student_model}-{'+'.join(teachers) or 'ce'}-{loss}".replace("tiny:", "")
        run = runs.launch_run(args, runs.new_run_dir(label))
        ss.selected_run = run.name
        st.success(f"Launched {run.name} (pid {run.pid}); it keeps running if you close the page.")

st.subheader("Runs")
all_runs = runs.list_runs()
if not all_runs:
    st.info(f"No runs in {runs.runs_dir().resolve()} yet (set XTOK_RUNS_DIR to use another directory).")
    st.stop()


def _row(r: runs.Run) -> list:
    m = r.metrics()
    last = m[-1] if m else {}
    acc = next((x for x in (_accuracy(row) for row in reversed(m)) if x is not None), None)
    teachers = r.setting("teachers") or []
    return [r.name, r.state, last.get("step", ""), f"{last['loss']:.4f}" if "loss" in last else "",
            "" if acc is None else f"{acc:.1%}", r.setting("loss") or "", r.setting("student") or "", ", ".join(teachers)]


def _accuracy(row: dict):
    for k, v in row.items():
        if "acc" in k and isinstance(v, (int, float)):
            return float(v)
    return None


st.dataframe(pd.DataFrame([_row(r) for r in all_runs], columns=["run", "state", "step", "loss", "accuracy", "loss fn", "student", "teachers"]),
             hide_index=True, width="stretch")
names = [r.name for r in all_runs]
if ss.get("selected_run") not in names:
    ss.selected_run = names[0]
st.selectbox("Follow run", names, key="selected_run")


def curves(frames: dict[str, pd.DataFrame], y: str, title: str, fmt: str = "") -> go.Figure:
    fig = go.Figure()
    for name, df in frames.items():
        if y in df and df[y].notna().any():
            d = df[df[y].notna()]
            fig.add_trace(go.Scatter(x=d["step"], y=d[y], mode="lines+markers" if len(d) < 60 else "lines", name=name))
    fig.update_layout(height=300, title=title, margin=dict(l=10, r=10, t=40, b=10), xaxis_title="step",
                      yaxis=dict(tickformat=fmt), legend=dict(orientation="h", y=-0.25))
    return fig


def metrics_frame(r: runs.Run) -> pd.DataFrame:
    df = pd.DataFrame(r.metrics())
    if df.empty:
        return df
    acc = [c for c in df.columns if "acc" in c]
    if acc:
        df["accuracy"] = df[acc[0]]
    return df


followed_running = runs.load_run(runs.runs_dir() / ss.selected_run).running


def live() -> None:
    run = runs.load_run(runs.runs_dir() / ss.selected_run)
    if followed_running and not run.running:
        st.rerun()  # the run ended: refresh the whole page (runs table) and stop polling
    df = metrics_frame(run)
    top = st.columns([2, 1, 1, 1])
    top[0].markdown(f"**{run.name}** · state **{run.state}**" + (f" · pid {run.pid}" if run.running and run.pid else ""))
    top[1].metric("step", int(df["step"].iloc[-1]) if not df.empty and "step" in df else "—")
    top[2].metric("loss", f"{df['loss'].iloc[-1]:.4f}" if not df.empty and "loss" in df else "—")
    if run.running:
        if top[3].button("Stop run", type="primary", key="stop_run"):
            runs.stop_run(run)
            st.toast(f"Sent SIGTERM to {run.name}; it checkpoints and stops.")
    if run.state == "failed" and run.error:
        st.error(run.error)
    elif run.state in ("ended", "failed") and not df.size:
        st.code(run.log_tail() or "(no output)", language=None)
    if df.empty:
        st.caption("Waiting for the first step (a `tiny:` demo teacher is trained and cached first)…" if run.running
                   else "This run wrote no metrics.")
        if run.running and run.log_tail(3):
            st.code(run.log_tail(3), language=None)
        return
    c1, c2 = st.columns(2)
    parts = {k: df[["step", k]].rename(columns={k: "value"}) for k in ("loss", "kd", "ce") if k in df}
    fig = go.Figure()
    for k, d in parts.items():
        fig.add_trace(go.Scatter(x=d["step"], y=d["value"], mode="lines+markers" if len(d) < 60 else "lines", name=k))
    fig.update_layout(height=300, title="Training loss", margin=dict(l=10, r=10, t=40, b=10), xaxis_title="step",
                      legend=dict(orientation="h", y=-0.25))
    c1.plotly_chart(fig, key="live_loss")
    if "accuracy" in df and df["accuracy"].notna().any():
        c2.plotly_chart(curves({run.name: df}, "accuracy", "Held-out arithmetic accuracy", ".0%"), key="live_acc")
    else:
        c2.caption("Held-out arithmetic accuracy appears here at the run's first evaluation (--eval-every).")
    d1, d2, _ = st.columns([1, 1, 4])
    d1.download_button("Metrics · JSONL", "\n".join(json.dumps(r) for r in run.metrics()) + "\n",
                       file_name=f"{run.name}.metrics.jsonl", mime="application/json", key="dl_jsonl", on_click="ignore")
    d2.download_button("Metrics · CSV", df.to_csv(index=False), file_name=f"{run.name}.metrics.csv", mime="text/csv",
                       key="dl_csv", on_click="ignore")


# Polls only while the followed run is alive; the fragment reruns alone, the rest of the page stays.
st.fragment(live, run_every=REFRESH_S if followed_running else None)()

st.subheader("Compare runs")
overlay = st.multiselect("Runs to overlay", names, default=names[: min(3, len(names))], key="overlay")
if overlay:
    frames = {n: metrics_frame(runs.load_run(runs.runs_dir() / n)) for n in overlay}
    frames = {n: df for n, df in frames.items() if not df.empty}
    c1, c2 = st.columns(2)
    c1.plotly_chart(curves(frames, "loss", "Training loss"), key="cmp_loss")
    if any("accuracy" in df and df["accuracy"].notna().any() for df in frames.values()):
        c2.plotly_chart(curves(frames, "accuracy", "Held-out arithmetic accuracy", ".0%"), key="cmp_acc")
    else:
        c2.caption("None of these runs has evaluated arithmetic accuracy yet.")
