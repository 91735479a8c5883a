% rebase('layout.html.tpl', title='Dues overdue')
<p>Hello {{name}},</p>
<p>your {{space}} dues were due on {{due_date}}; <b>{{cad(balance_cents)}} CAD</b> is outstanding.</p>
% if address:
<p>Pay to your dues address: <a href="{{uri}}"><code>{{address}}</code></a></p>
% else:
<p>You can pay at the space (cash or e-transfer).</p>
% end
<p>If you think this is a mistake, reply to this mail.</p>
