% rebase('layout.html.tpl', title='Dues overdue')
<p>Hello {{name}},</p>
<p>your {{space}} dues were due on {{due_date}}; <b>{{cad(balance_cents)}} CAD</b> is outstanding.</p>
<p>Pay to your dues address: <a href="{{uri}}"><code>{{address}}</code></a></p>
<p>If you think this is a mistake, reply to this mail.</p>
