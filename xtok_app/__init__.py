"""The Streamlit explorer's support code: state and caches (`state`), token display (`render`),
token search (`search`) and background runs (`runs`). Every computation stays in `xtok_core`."""
