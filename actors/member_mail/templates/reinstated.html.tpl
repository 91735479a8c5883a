% rebase('layout.html.tpl', title='Welcome back')
<p>Hello {{name}},</p>
<p>your {{space}} membership is active again, paid through {{paid_through}}.</p>
<p>Welcome back!</p>
