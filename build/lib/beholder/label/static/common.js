// Shared by the labeller's pages: the rater and token from the address, and JSON calls to the API.
const params = new URLSearchParams(location.search);
const query = new URLSearchParams();
if (params.get("rater")) query.set("rater", params.get("rater"));
if (params.get("token")) query.set("token", params.get("token"));
const suffix = "?" + query.toString();

async function call(method, path, body) {
  const response = await fetch(path + suffix, {method, headers: {"Content-Type": "application/json"}, body: body && JSON.stringify(body)});
  if (!response.ok) throw new Error((await response.json()).detail || response.statusText);
  return response.json();
}

// One action at a time: its answer (the new state) is rendered by the page's render(state).
let busy = false;
async function act(work) {
  if (busy) return;
  busy = true;
  try { render(await work()); document.getElementById("message").textContent = ""; }
  catch (error) { document.getElementById("message").textContent = error.message; }
  finally { busy = false; }
}
