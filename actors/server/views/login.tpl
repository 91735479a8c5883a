% rebase('layout.tpl', title=title, refresh=None)
<h1>Log in</h1>
<form id="login" class="card" action="/login" method="get" autocomplete="off">
<p><label for="token">API token</label>
<input id="token" type="password" autocomplete="off" spellcheck="false" placeholder="dctrl_..." required></p>
<p><button type="submit">Log in</button></p>
<p id="login-error" class="error" hidden></p>
</form>
<p class="note">Make a token on the server with
<code>dctrl server token add NAME --scope members --scope finance --scope events</code>
(every token has the public scope). The token is kept in a cookie of this browser for a day;
it is never sent in a URL.</p>
<script src="/static/login.js"></script>
